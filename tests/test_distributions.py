"""The fused Normal densities against Pyro's ``Normal(...).to_event``: draws, values, gradients, plates, KL."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae.distributions import IndependentNormal, UnitNormal


def _params():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(4, 2, 3, generator=g).requires_grad_()
    scale = (0.2 + torch.rand(4, 2, 3, generator=g)).requires_grad_()
    return loc, scale


def _draw_and_score(make, seed=1):
    """A reparameterised draw, its log-density and the total gradient along the draw."""
    loc, scale = _params()
    d = make(loc, scale)
    torch.manual_seed(seed)
    z = d.rsample()
    lp = d.log_prob(z)
    return z, lp, torch.autograd.grad(lp.sum(), (loc, scale), materialize_grads=True)  # loc: exactly 0


def test_independent_normal_draws_scores_and_differentiates_as_normal_to_event():
    z, lp, grads = _draw_and_score(lambda m, s: IndependentNormal(m, s, 2))
    want_z, want_lp, want_grads = _draw_and_score(lambda m, s: dist.Normal(m, s).to_event(2))
    torch.testing.assert_close(z, want_z, rtol=0, atol=0)  # the same random numbers
    torch.testing.assert_close(lp, want_lp)
    for g, w in zip(grads, want_grads):  # d/d scale of log q(loc + scale * eps) is -1 / scale; d/d loc is 0
        torch.testing.assert_close(g, w)
    assert lp.shape == (4,)


def test_independent_normal_scores_other_values_and_a_changed_draw_by_the_formula():
    loc, scale = _params()
    ours, ref = IndependentNormal(loc, scale, 2), dist.Normal(loc, scale).to_event(2)
    other = torch.randn(5, 4, 2, 3)  # a particle dim in front broadcasts as for Normal
    torch.testing.assert_close(ours.log_prob(other), ref.log_prob(other))
    z = ours.rsample()
    with torch.no_grad():
        z.add_(1.0)  # the kept noise no longer describes z
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z))
    assert (ours.batch_shape, ours.event_shape) == (ref.batch_shape, ref.event_shape)
    assert ours.expand([4]) is ours and type(ours.expand([3, 4])) is IndependentNormal  # a plate of its own size
    torch.testing.assert_close(ours.mean, loc)
    torch.testing.assert_close(ours.variance, scale ** 2)


def test_unit_normal_is_the_standard_normal_and_broadcasts_to_its_batch():
    ours = UnitNormal(torch.zeros(3)).expand([4])
    ref = dist.Normal(torch.zeros(3), 1.0).to_event(1).expand([4])
    assert type(ours) is UnitNormal and (ours.batch_shape, ours.event_shape) == ((4,), (3,))
    z = torch.randn(4, 3, requires_grad=True)
    lp, want = ours.log_prob(z), ref.log_prob(z)
    torch.testing.assert_close(lp, want)
    torch.testing.assert_close(torch.autograd.grad(lp.sum(), z)[0], -z)
    one = torch.randn(3)  # one point scored against the batch: broadcast to it, as Normal does
    torch.testing.assert_close(ours.log_prob(one), ref.log_prob(one))
    assert ours.log_prob(one).shape == (4,)
    torch.testing.assert_close(ours.log_prob(torch.randn(5, 1, 3)).shape, torch.Size([5, 4]))


def test_kl_divergence_dispatches_to_the_normal_closed_form():
    loc, scale = _params()
    q, p = IndependentNormal(loc, scale, 2), UnitNormal(torch.zeros(4, 2, 3), 2)
    want = (0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).sum((-2, -1))
    torch.testing.assert_close(kl_divergence(q, p), want)


@pytest.mark.parametrize("vectorise", [False, True])
def test_plates_keep_the_class_and_the_fused_density(vectorise):
    """In a data plate (and a vectorised particle plate) the guide's draw is still scored from its noise."""
    loc, scale = _params()
    loc, scale = loc[:, 0], scale[:, 0]  # [4, 3]

    def guide(law):
        with pyro.plate("particles", 5, dim=-2) if vectorise else poutine.block(hide=[]):
            with pyro.plate("data", 4, dim=-1):
                return pyro.sample("z", law(loc, scale))

    traces = []
    for law in (IndependentNormal, lambda m, s: dist.Normal(m, s).to_event(1)):
        torch.manual_seed(2)
        traces.append(poutine.trace(guide).get_trace(law))
        traces[-1].compute_log_prob()
    (ours, ref) = (tr.nodes["z"] for tr in traces)
    assert type(ours["fn"]) is IndependentNormal
    assert ours["fn"]._draw is not None and ours["fn"]._draw[0] is ours["value"]
    torch.testing.assert_close(ours["value"], ref["value"], rtol=0, atol=0)
    torch.testing.assert_close(ours["log_prob"], ref["log_prob"])
    assert ours["log_prob"].shape == ((5, 4) if vectorise else (4,))
