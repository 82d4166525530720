"""The VAE's Pyro programs: sites, shapes, plate scaling, fitted-model API, input checks."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, elbo, fit, make_optimizer
from pyro.nn import DenseNN

from pyro_vae.nets import MLP, ConvDecoder, ConvEncoder, make_activation


@pytest.mark.parametrize("prior", ["normal", "mog", "vamp"])
def test_model_and_guide_traces_agree_and_scale_by_n_over_b(prior):
    vae = VAE((1, 8, 8), latent_dim=3, prior={"name": prior, **({"n_components": 4} if prior != "normal" else {})})
    x = torch.rand(16, 1, 8, 8)
    idx = torch.arange(100, 116)
    guide_tr = poutine.trace(vae.guide).get_trace(x, idx, 1000)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, idx, 1000)
    latent = lambda tr: {n for n, s in tr.nodes.items()  # noqa: E731
                         if s["type"] == "sample" and not s["is_observed"] and n != "data"}
    assert latent(guide_tr) == latent(model_tr) == {"z"}
    assert model_tr.nodes["z"]["value"] is guide_tr.nodes["z"]["value"]
    assert guide_tr.nodes["z"]["value"].shape == (16, 3)
    assert model_tr.nodes["x"]["is_observed"] and model_tr.nodes["x"]["value"] is x
    for tr in (guide_tr, model_tr):
        frame, = tr.nodes["z"]["cond_indep_stack"]
        assert frame.name == "data" and frame.size == 16 and frame.full_size == 1000
        assert tr.nodes["z"]["scale"] == pytest.approx(1000 / 16)
        assert torch.equal(tr.nodes["data"]["value"], idx)
    model_tr.compute_log_prob()
    assert model_tr.nodes["x"]["log_prob"].shape == (16,)  # event dims folded by .to_event
    assert model_tr.nodes["z"]["fn"].event_shape == (3,)


def test_elbo_of_minibatch_is_unbiased_for_full_data():
    """Scaled minibatch losses average to the full-data loss (the plate's N/B scaling)."""
    vae = VAE((6,), latent_dim=2, likelihood="normal")
    x = torch.randn(40, 6)
    loss = pyro.infer.Trace_ELBO(num_particles=2000, vectorize_particles=True)
    full = loss.loss(vae.model, vae.guide, x)
    halves = [loss.loss(vae.model, vae.guide, x[i:i + 20], torch.arange(i, i + 20), 40) for i in (0, 20)]
    assert sum(halves) / 2 == pytest.approx(full, rel=2e-3)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (2, 7, 9)])
def test_conv_nets_for_image_shapes(shape):
    enc, dec = ConvEncoder(shape, 5), ConvDecoder(5, shape, n_params=2)
    x = torch.rand(3, 4, *shape)  # two batch dims, as under vectorised particles
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (3, 4, 5) and (scale > 0).all()
    assert dec(loc).shape == (3, 4, 2, *shape)


@pytest.mark.parametrize("hidden,heads,activation", [([16], [2, 2], "softplus"), ([8, 5], [7], "tanh"),
                                                     ([4], [3, 1, 2], "relu")])
def test_mlp_is_pyros_densenn(hidden, heads, activation):
    """Same layout as ``DenseNN`` (a checkpoint written with it loads), same outputs and gradients."""
    torch.manual_seed(0)
    ref = DenseNN(6, hidden, param_dims=heads, nonlinearity=make_activation(activation))
    mlp = MLP(6, hidden, heads, activation)
    mlp.load_state_dict(ref.state_dict())  # strict: the same parameter names and shapes
    x = torch.randn(2, 3, 6)  # two batch dims, as under vectorised particles
    want, got = ref(x), mlp(x)
    want, got = (want,) if len(heads) == 1 else want, (got,) if len(heads) == 1 else got
    assert [g.shape for g in got] == [(2, 3, h) for h in heads]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)
    weights = [torch.randn_like(w) for w in want]
    sum((w * c).sum() for w, c in zip(want, weights)).backward()
    sum((g * c).sum() for g, c in zip(got, weights)).backward()
    for (name, p), q in zip(ref.named_parameters(), mlp.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_conv_net_refuses_flat_data():
    with pytest.raises(ValueError, match=r"conv encoder needs image-shaped data.*\(64,\).*'mlp'"):
        VAE((64,), net="conv")


def test_fitted_model_api_shapes(digits):
    x, _ = digits
    vae = VAE((1, 8, 8), latent_dim=4, prior="mog")
    fit(vae, x[:200], epochs=1, progress=False)
    loc, scale = vae.encode(x[:7])
    assert loc.shape == scale.shape == (7, 4)
    assert vae.decode(loc).shape == (7, 1, 8, 8)
    assert vae.reconstruct(x[:7]).shape == (7, 1, 8, 8)
    draws = vae.reconstruct(x[:7], sample=True)
    assert draws.shape == (7, 1, 8, 8) and set(draws.unique().tolist()) <= {0.0, 1.0}
    mean = vae.sample(9)
    assert mean.shape == (9, 1, 8, 8) and ((mean >= 0) & (mean <= 1)).all()
    assert set(vae.sample(9, mean=False).unique().tolist()) <= {0.0, 1.0}


def test_decode_mean_is_likelihood_mean():
    vae = VAE((5,), latent_dim=2, likelihood="poisson")
    z = torch.randn(4, 2)
    torch.testing.assert_close(vae.decode(z), vae.likelihood(vae.decoder(z)).mean)


def test_user_networks():
    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 4)

        def forward(self, x):
            loc, raw = self.lin(x).chunk(2, -1)
            return loc, torch.nn.functional.softplus(raw)

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 6)

        def forward(self, z):
            return self.lin(z).unsqueeze(-2)  # [*b, n_params=1, 6]

    vae = VAE((6,), latent_dim=2, likelihood="normal", encoder=Enc(), decoder=Dec())
    x = torch.randn(30, 6)
    before = elbo(vae, x, num_particles=10)
    fit(vae, x, epochs=30, batch_size=None, optim=make_optimizer("adam", lr=0.05), progress=False)
    assert elbo(vae, x, num_particles=10) > before + 1.0


BAD_INPUTS = [
    (torch.full((4, 1, 8, 8), float("nan")), ValueError, r"256 NaN and 0 infinite values in 4 rows \(first at row 0\)"),
    (torch.rand(4, 64), ValueError, r"shape \[4, 64\].*expected \[N, 1, 8, 8\].*x\.reshape\(-1, 1, 8, 8\)"),
    (torch.rand(4, 1, 9, 9), ValueError, r"Build the model with data_shape=\(1, 9, 9\)"),
    (torch.rand(0, 1, 8, 8), ValueError, "data is empty"),
    ([[0.0] * 64], TypeError, r"must be a torch\.Tensor.*torch\.as_tensor"),
    (torch.rand(4, 1, 8, 8) * 2, ValueError, r"outside the support of the 'bernoulli' likelihood"),
]


@pytest.mark.parametrize("x,exc,match", BAD_INPUTS, ids=["nan", "flat", "wrong-size", "empty", "list", "support"])
def test_bad_input_is_refused_with_a_clear_message(x, exc, match):
    vae = VAE((1, 8, 8), latent_dim=2)
    with pytest.raises(exc, match=match):
        fit(vae, x, epochs=1, progress=False)


def test_inf_is_reported():
    x = torch.rand(5, 3)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"0 NaN and 1 infinite values in 1 rows \(first at row 2\)"):
        VAE((3,), likelihood="normal").check_data(x)


def test_bad_network_options():
    with pytest.raises(ValueError, match=r"unknown net 'cnn'.*Did you mean 'conv'"):
        VAE((1, 8, 8), net="cnn")
    with pytest.raises(ValueError, match=r"unknown option 'hidden' for net 'linear'"):
        VAE((4,), net={"name": "linear", "hidden": [3]})
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        VAE((4,), net={"name": "mlp", "activation": "relu6"})


def test_stale_param_store_does_not_hijack_training():
    """A second model named 'vae' trains its own weights, not an earlier model's store entries."""
    x = torch.randn(50, 4)
    fit(VAE((4,), latent_dim=2, likelihood="normal"), x, epochs=1, progress=False)
    vae = VAE((4,), latent_dim=2, likelihood="normal")
    before = [p.detach().clone() for p in vae.parameters()]
    fit(vae, x, epochs=2, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))


def test_registration_follows_changes_to_the_module():
    """Each program's parameter list is kept between steps: a swapped network, a new parameter, a frozen or
    unfrozen one and a new name all show in the next step's param sites, exactly as a fresh walk gives them."""
    from torch import nn

    vae = VAE((6,), latent_dim=2, net={"name": "mlp", "hidden": [4]})
    x = torch.rand(3, 6)

    def sites(program):
        pyro.clear_param_store()  # else the store answers with the tensor first registered under a name
        with poutine.trace(param_only=True) as tr:
            getattr(vae, program)(x)
        return {name: site["value"] for name, site in tr.trace.nodes.items()}

    def expected(program):
        owned = {k: p for k, p in vae.named_parameters() if p.requires_grad
                 and (k.partition(".")[0] in vae.guide_parts) == (program == "guide")}
        return {f"{vae.name}$$${k}": p for k, p in owned.items()}

    def check():
        for program in ("model", "guide"):
            want = expected(program)  # first: registering a frozen parameter would unfreeze it (Pyro's store does)
            got = sites(program)
            assert got.keys() == want.keys() and all(got[k] is want[k] for k in want), program

    old, new = vae.decoder, type(vae.decoder)(2, (6,), hidden=[5])
    check()
    vae.decoder = new  # a decoder built before: its parameters, not the old ones
    check()
    assert not any(p is q for p in sites("model").values() for q in old.parameters())
    vae.likelihood.temperature = nn.Parameter(torch.ones(()))  # a parameter added to a submodule
    check()
    assert "vae$$$likelihood.temperature" in sites("model")
    vae.encoder.net.layers[0].weight.requires_grad_(False)  # frozen, then trainable again
    check()
    vae.encoder.net.layers[0].weight.requires_grad_(True)
    check()
    vae.name = "renamed"
    check()
    assert all(name.startswith("renamed$$$") for name in sites("guide"))
