"""Semi-supervised VAE "M2" (Kingma et al. 2014): a discrete label site that Pyro enumerates.

::

    model:  y_n ~ Cat(1/K),  z_n ~ p(z),  x_n ~ p(x | decoder(z_n, y_n))
            + alpha * log q(y_n | x_n)                   (labelled n only, a pyro.factor)
    guide:  y_n ~ q(y | x_n) = Cat(classifier(x_n))      enumerated in parallel
            z_n ~ q(z | x_n, y_n) = posterior(*encoder(x_n, y_n))     N(loc, scale) by default

Labelled and unlabelled points share one minibatch and one ``"data"`` plate:
the data are ``(x, y)`` with ``y = -1`` where the label is unknown, so
:func:`~pyro_vae.train.fit` trains M2 like any other model. For a labelled
point the guide's label distribution is the point mass at the known label
(logits 0 there and -inf elsewhere). ``TraceEnum_ELBO`` sums over all K values
of ``y`` weighted by ``q(y | x)`` and drops zero-weight terms, so the sum
collapses to the observed-label ELBO ``-L(x, y)`` with zero entropy, while an
unlabelled point gets the full ``-U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x))``
(Kingma et al. 2014, eq. 7-9). The plate's ``num_data / batch`` scale applies to
both, and to the classification term, which is ``alpha`` per labelled point.

``fit`` and ``elbo`` use an enumerating objective for it by themselves
(``objective = "enum"`` on the class: the default ``"elbo"`` means
``TraceEnum_ELBO(max_plate_nesting=1)``, the same bound with ``y`` summed exactly).

References:
    1. Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep Generative Models.
"""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Predictive

from ..nets import MLP, layer_sizes
from ..posteriors import make_posterior
from ..priors import VampPrior, make_prior
from .base import Model, SampleGrid, Unsupported, write_json
from .parts import ContextDecoder, ContextEncoder, one_hot

__all__ = ["SSVAE", "labels_only_classifier", "balanced_labels"]


class SSVAE(Model):
    """M2: ``p(x | y, z) p(y) p(z)`` with guide ``q(y | x) q(z | x, y)``, ``y`` enumerated exactly.

    Args:
        data_shape: shape of one data point.
        latent_dim: size of ``z``.
        n_classes: number of labels ``K``.
        prior: ``p(z)`` (object, name or dict; not ``"vamp"``, which needs an ``x``-only encoder).
        likelihood: ``p(x | z, y)``.
        net: family of ``q(z | x, y)`` (dense: ``"mlp"``/``"linear"``) and of the decoder (any).
        classifier_hidden, activation: the classifier ``q(y | x)``, a :class:`~pyro_vae.nets.MLP`.
        encoder, decoder: net specs (or modules) overriding ``net`` for one side, e.g. a conv decoder.
        alpha: weight of ``log q(y | x)`` per labelled point; the default is Pyro's
            tutorial's 46. It has to grow with the unlabelled points per label: measured
            here, alpha 1000 beats 46 on MNIST with 100 labels (0.68 against 0.57 test
            accuracy after 3 epochs), and on the digits with 100 labels alpha 100 beats the
            classifier on the labels alone where Kingma et al.'s ``0.1 N / N_labelled`` = 1.3
            only matches it (benchmarks/RESULTS.md).
        name: prefix in Pyro's param store.
        posterior: the family of ``q(z | x, y)`` (a :class:`~pyro_vae.posteriors.Posterior` or its
            name/dict); it sizes the encoder. Under enumeration it is called with parameters
            ``[K, B, *]``, one row per label value, which every built-in family accepts.

    Call ``model(x, y, idx, num_data)`` / ``guide(...)`` with ``x: [B, *data_shape]`` and
    ``y: [B]`` integer labels, ``-1`` for unlabelled points (``y=None``: all unlabelled).
    """

    inputs = ("x", "y")
    guide_parts = ("encoder", "posterior", "classifier")  # the guide registers these, the model the rest
    latent_sites = ("y", "z")
    max_plate_nesting = 1  # y is enumerated at dim -2, left of the data plate
    objective = "enum"  # fitted and evaluated with TraceEnum_ELBO (objectives.objective_for): y is summed exactly
    label_option = "n_classes"

    def __init__(self, data_shape, latent_dim: int = 50, n_classes: int = 10, prior="normal",
                 likelihood="bernoulli", net="mlp", classifier_hidden=(500,), activation: str = "softplus",
                 alpha: float = 46.0, encoder=None, decoder=None, name: str = "m2", posterior="normal"):
        super().__init__(data_shape, likelihood, name)
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.latent_dim, self.n_classes, self.alpha = int(latent_dim), int(n_classes), float(alpha)
        flat = math.prod(self.data_shape)
        sizes = layer_sizes(classifier_hidden, "classifier_hidden", "the classifier q(y | x) needs one, e.g. [500]")
        self.classifier = MLP(flat, sizes, [self.n_classes], activation)
        self.posterior = make_posterior(posterior, self.latent_dim)
        self.encoder = ContextEncoder(net if encoder is None else encoder, self.data_shape, self.n_classes,
                                      self.latent_dim, self.posterior.heads)
        self.decoder = ContextDecoder(net if decoder is None else decoder, self.latent_dim, self.n_classes,
                                      self.data_shape, self.likelihood.n_params)
        self.prior = make_prior(prior, self.latent_dim, self.data_shape)
        if isinstance(self.prior, VampPrior):
            raise ValueError("the VampPrior needs an encoder of x alone; M2's encoder is q(z | x, y); choose another "
                             "prior, e.g. 'mog' for a learned mixture")
        self.prior.setup(self)
        self.register_buffer("_flat_logits", torch.zeros(self.n_classes), persistent=False)  # p(y) = 1/K

    # ----------------------------------------------------------------- Pyro programs
    def _logits(self, x):
        return self.classifier(x.reshape(*x.shape[: x.dim() - len(self.data_shape)], -1))

    def _labels(self, y, batch):
        """``(labels clamped to >= 0, labelled mask)`` or ``(None, None)`` when nothing is labelled."""
        if y is None:
            return None, None
        if y.shape != (batch,):
            raise ValueError(f"labels y must have shape [{batch}] (one per point, -1 = unlabelled), got {list(y.shape)}")
        if bool(((y < -1) | (y >= self.n_classes)).any()):
            raise ValueError(f"labels must be in -1..{self.n_classes - 1} (-1 = unlabelled), found values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        labelled = y >= 0
        return y.clamp(min=0).long(), labelled

    def model(self, x=None, y=None, idx=None, num_data=None, n=None):
        """``y ~ Cat(1/K)``, ``z ~ p(z)``, ``x ~ p(x | decoder(z, y))``; ``alpha log q(y|x)`` on labelled points."""
        self.register_params("model")
        batch = x.shape[0] if x is not None else n
        labels, labelled = self._labels(y, batch)
        with self.data_plate(x, idx, num_data, n):
            # The guide pins y for labelled points and enumerates it for the others (see the module docstring).
            y_site = pyro.sample("y", dist.Categorical(logits=self._flat_logits))
            z = pyro.sample("z", self.prior())
            params = self.decoder(z, one_hot(y_site, self.n_classes, z.dtype))
            out = pyro.sample("x", self.likelihood(params), obs=x)
            if x is not None and labelled is not None and self.alpha > 0:
                log_q = self._logits(x).log_softmax(-1).gather(-1, labels[:, None])[:, 0]
                with poutine.scale(scale=self.alpha):  # the auxiliary classification loss (Kingma et al. eq. 9)
                    pyro.factor("classifier", log_q * labelled)
            return out

    def guide(self, x=None, y=None, idx=None, num_data=None, n=None):
        """``y ~ q(y | x)`` (enumerated; a point mass for labelled points), ``z ~ q(z | x, y)``."""
        self.register_params("guide")
        if x is None:
            raise ValueError("the guide needs data x")
        labels, labelled = self._labels(y, x.shape[0])
        with self.data_plate(x, idx, num_data, n):
            logits = self._logits(x).log_softmax(-1)
            if labelled is not None:
                pinned = torch.full_like(logits, -math.inf).scatter(-1, labels[:, None], 0.0)
                logits = torch.where(labelled[:, None], pinned, logits)
            y_site = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            params = self.encoder(x, one_hot(y_site, self.n_classes, x.dtype))  # [K, B, *] when y is enumerated
            return pyro.sample("z", self.posterior(*params))

    # ----------------------------------------------------------------- fitted-model API
    @torch.no_grad()
    def predict_proba(self, x):
        """``q(y | x)``, ``[B, n_classes]``."""
        self.check_data(x, support=False)
        return self._logits(x.to(self.device)).softmax(-1)

    @torch.no_grad()
    def classify(self, x):
        """Most probable label under ``q(y | x)``, ``[B]``."""
        return self.predict_proba(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x, y, batch_size: int = 4096) -> float:
        """Fraction of ``x`` whose :meth:`classify` equals ``y``."""
        hits = sum(int((self.classify(x[i:i + batch_size]) == y[i:i + batch_size].to(self.device)).sum())
                   for i in range(0, x.shape[0], batch_size))
        return hits / x.shape[0]

    @torch.no_grad()
    def encode(self, x, y=None):
        """The parameters of ``q(z | x, y)`` (``(loc, scale)`` for ``"normal"``); ``y`` defaults to :meth:`classify`."""
        self.check_data(x, support=False)
        x = x.to(self.device)
        y = self.classify(x) if y is None else y.to(self.device)
        return self.encoder(x, one_hot(y, self.n_classes, x.dtype))

    @torch.no_grad()
    def posterior_mean(self, x, labels=None):
        """``E_q[z | x] = sum_y q(y | x) E_q[z | x, y]``, the label summed out as in training."""
        self.check_data(x, support=False)
        x = x.to(self.device)
        classes = torch.eye(self.n_classes, dtype=x.dtype, device=x.device)[:, None]  # [K, 1, K]
        means = self.posterior.mean(*self.encoder(x, classes))  # [K, N, latent_dim]
        return torch.einsum("nk,knd->nd", self.predict_proba(x), means)

    def decoder_context(self, *context):
        if len(context) != 1:
            raise Unsupported("M2 decodes z with a label y: decode(z, y)")
        y = context[0].to(self.device)
        return (one_hot(y, self.n_classes, self._flat_logits.dtype),)

    @torch.no_grad()
    def reconstruct(self, x, labels=None):
        """``E[x | z, y]`` at the posterior mean of ``z`` given the most probable label ``y``."""
        y = self.classify(x)
        return self.decode(self.posterior.mean(*self.encode(x, y)), y)

    @torch.no_grad()
    def sample(self, n: int, y=None, mean: bool = True):
        """``n`` draws of ``z ~ p(z)`` decoded with labels ``y: [n]`` (default: drawn from ``p(y)``)."""
        model = self.model if y is None else poutine.condition(self.model, data={"y": y.to(self.device)})
        draws = Predictive(model, num_samples=1, return_sites=("y", "z", "x"))(n=n)
        labels = draws["y"][0] if y is None else y
        return self.decode(draws["z"][0], labels) if mean else draws["x"][0]

    @torch.no_grad()
    def sample_grid(self, n: int = 64, mean: bool = True) -> SampleGrid:
        """A row per class, ``min(10, n // n_classes)`` (at least 1) draws each, labelled ``"y = k"``."""
        per = max(1, min(10, n // self.n_classes))
        labels = torch.arange(self.n_classes).repeat_interleave(per)
        return SampleGrid(self.sample(len(labels), y=labels, mean=mean), per,
                          tuple(f"y = {k}" for k in range(self.n_classes)))

    # ----------------------------------------------------------------- the data of a split, artefacts
    def split_inputs(self, x, labels=None, *, split="train", labelled=None, seed=0):
        """``(x, y)``: on the training split ``labelled`` points keep their label (balanced over classes,
        :func:`balanced_labels`) and the rest are ``-1``; on held-out splits every label is hidden, so
        their ELBO is the bound on ``log p(x)``."""
        if split != "train":
            return x, torch.full((len(x),), -1, dtype=torch.long)
        if labels is None:
            raise Unsupported("M2 trains on labels: this data set has none; use a labelled data set")
        if labelled is None:
            raise Unsupported("M2 needs data.labelled: how many training points keep their label (--labelled 100 "
                              "or `labelled = 100` in [data], balanced over classes); the rest are unlabelled")
        return x, balanced_labels(labels, labelled, seed)

    def artifacts(self, run_dir, splits, inputs):
        """``accuracy.json``: the test accuracy of ``q(y | x)``, with the number of labels it was trained on."""
        if splits.test_labels is None or not len(splits.test):
            return {}
        record = {"test_accuracy": self.accuracy(splits.test, splits.test_labels), "n": len(splits.test),
                  "labelled": int((inputs["train"][1] >= 0).sum())}
        return {"accuracy": write_json(run_dir / "accuracy.json", record)}


def balanced_labels(labels: torch.Tensor, n_labelled: int, seed: int = 0) -> torch.Tensor:
    """``labels`` with all but ``n_labelled`` points, as equal a number per class as possible, set to ``-1``.

    The kept points are a seeded random choice within each class.
    """
    classes = labels.unique()
    if n_labelled > len(labels):
        raise ValueError(f"data.labelled = {n_labelled} but the training split has only {len(labels)} points")
    g = torch.Generator().manual_seed(seed)
    out = torch.full_like(labels, -1)
    per_class, extra = divmod(int(n_labelled), len(classes))
    for i, k in enumerate(classes):
        idx = (labels == k).nonzero()[:, 0]
        keep = idx[torch.randperm(len(idx), generator=g)[:per_class + (i < extra)]]
        out[keep] = k
    return out


def labels_only_classifier(m2: SSVAE, x: torch.Tensor, y: torch.Tensor, steps: int = 500, lr: float = 1e-3,
                           seed: int = 0) -> torch.nn.Module:
    """The baseline M2 has to beat: its classifier's architecture, trained on the labelled points alone.

    A copy of ``m2.classifier`` with freshly drawn weights (under ``seed``) is
    fitted by full-batch Adam on the cross-entropy of the points with ``y >= 0``.
    Returns the network (logits of ``x`` flattened); ``m2`` is not changed.

    Args:
        x: ``[N, *data_shape]``; y: ``[N]`` labels, ``-1`` for unlabelled points (left out).
    """
    labelled = y >= 0
    if not bool(labelled.any()):
        raise ValueError("labels_only_classifier needs at least one labelled point (y >= 0)")
    net = copy.deepcopy(m2.classifier)
    torch.manual_seed(seed)
    for module in net.modules():  # in construction order, so the draw equals a freshly built network's
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    flat = x[labelled].reshape(int(labelled.sum()), -1).to(m2.device)
    target = y[labelled].long().to(m2.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():  # also when called under no_grad
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(flat), target).backward()
            opt.step()
    return net.eval()
