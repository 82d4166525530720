"""Conditional VAE: class-conditional samples look like their class; quadrant completion keeps what is observed."""

import pytest
import torch
from pyro import poutine
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pyro_vae import elbo, fit, make_optimizer
from pyro_vae.models import CVAE, ConditionalNormal, fill_hidden, quadrant_task


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest


def test_class_conditional_samples_are_classified_as_their_class(digits):
    x, y = digits
    with threadpool_limits(1):  # one BLAS thread: ~100x faster than two on a busy machine for this size
        clf = LogisticRegression(max_iter=3000).fit(x.reshape(len(x), -1).numpy(), y.numpy())
    cvae = CVAE((1, 8, 8), n_classes=10, latent_dim=4, net={"name": "mlp", "hidden": [128]})
    assert isinstance(cvae.prior, ConditionalNormal)
    fit(cvae, (x, y), epochs=25, batch_size=128, optim=make_optimizer("adam", lr=3e-3), progress=False)
    c = torch.arange(10).repeat_interleave(30)
    samples = cvae.sample(c)
    assert samples.shape == (300, 1, 8, 8)
    acc = (torch.as_tensor(clf.predict(samples.reshape(300, -1).numpy())) == c).float().mean().item()
    assert acc > 0.8  # chance is 0.1
    # swapping the condition changes the class of the samples: the decoder really uses c
    wrong = cvae.sample((c + 1) % 10)
    acc_wrong = (torch.as_tensor(clf.predict(wrong.reshape(300, -1).numpy())) == c).float().mean().item()
    assert acc_wrong < 0.2


def test_quadrant_task_masks_like_the_tutorial():
    images = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    for n_observed, n_hidden in [(1, 12), (2, 8), (3, 4)]:
        hidden, context, mask = quadrant_task(images, n_observed)
        assert hidden.shape == (2, n_hidden) and int(mask.sum()) == n_hidden
        assert (context[..., mask] == -1).all() and (context[..., ~mask] == images[..., ~mask]).all()
        assert torch.equal(fill_hidden(context, hidden, mask), images)
    _, _, mask = quadrant_task(images, 1)
    assert not mask[2:, :2].any()  # one observed quadrant: the bottom-left
    _, _, mask = quadrant_task(images, 3)
    assert mask.nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]  # three observed: all but bottom-right
    with pytest.raises(ValueError):
        quadrant_task(images, 4)


def test_quadrant_completion_beats_an_unconditional_fit(digits):
    x, _ = digits
    hidden, context, mask = quadrant_task(x, 1)  # the bottom-left quadrant is observed
    train, test = slice(0, 1400), slice(1400, None)
    cvae = CVAE(hidden.shape[1:], context_shape=context.shape[1:], latent_dim=4, net={"name": "mlp", "hidden": [128]})
    fit(cvae, (hidden[train], context[train]), epochs=25, batch_size=128, optim=make_optimizer("adam", lr=3e-3),
        progress=False)
    conditional = elbo(cvae, (hidden[test], context[test]), num_particles=10)
    # the same model given nothing of the observed quadrant (a constant context) fits the rest worse;
    # measured: 2.2 nats per image over two seeds, with Monte Carlo noise about 0.05
    blind = CVAE(hidden.shape[1:], context_shape=context.shape[1:], latent_dim=4, net={"name": "mlp", "hidden": [128]},
                 name="blind")
    const = torch.zeros_like(context)
    fit(blind, (hidden[train], const[train]), epochs=25, batch_size=128, optim=make_optimizer("adam", lr=3e-3),
        progress=False)
    assert conditional > elbo(blind, (hidden[test], const[test]), num_particles=10) + 1.0
    completed = fill_hidden(context[test][:5], cvae.sample(context[test][:5], num_samples=3), mask)
    assert completed.shape == (3, 5, 1, 8, 8)
    assert (completed[..., ~mask] == x[test][:5][..., ~mask]).all()


def test_sites_plates_and_checks():
    cvae = CVAE(6, context_shape=(2, 3), latent_dim=2, prior="normal", net={"name": "mlp", "hidden": [8]})
    x, c = torch.rand(4, 6), torch.randn(4, 2, 3)
    tr = poutine.trace(cvae.model).get_trace(x, c, idx=torch.arange(4), num_data=12)
    assert tr.nodes["z"]["value"].shape == (4, 2) and tr.nodes["x"]["scale"] == 3.0
    with pytest.raises(ValueError, match="context"):
        cvae.model(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match="exactly one"):
        CVAE(6, context_shape=3, n_classes=3)
    labels = CVAE(6, n_classes=3, latent_dim=2, net={"name": "mlp", "hidden": [8]})
    with pytest.raises(ValueError, match="0..2"):
        labels.model(x, torch.tensor([0, 1, 2, 3]))
