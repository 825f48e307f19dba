"""Sparse variational Gaussian process of the per-atom force-error scale (paper SI 2.2).

One GP per element maps the potential's latent features ``x`` (standardised with the training
mean and standard deviation) to the **log force-error magnitude** ``y = log|F_pred − F_ref|`` of
the training atoms, with a Gaussian likelihood. Regressing the logarithm keeps the output
positive and turns the multiplicative spread of a Maxwell variable into additive noise
(``Var[log e] = ψ'(3/2)/4 ≈ 0.23`` for Maxwell-distributed ``e``).

Output: with the latent posterior ``f(x) ~ N(μ, v)`` for ``log e``, the Maxwell scale is
``a = e / r`` with ``E[log r] = (ψ(3/2) + log 2)/2`` for a unit Maxwell ``r``, and the head
returns the posterior mean of the scale,

.. math::  s(x) = \\exp\\big(μ(x) + v(x)/2 − E[\\log r]\\big),

which grows where the GP has no data (``v`` returns to the prior output scale) — then one
prefactor A is fitted by Maxwell NLL on validation errors (σ = A·s).

Prior mean (``prior_mean``): away from its data a GP returns to its prior mean. With the
constant mean *learned* (``"mean"``, the paper's GP) that is the typical training error, so the
GP's σ plateaus there (paper SI 3) and an atom unlike anything in training looks no more
uncertain than a typical training atom: trained on bulk Li, its σ on surface atoms was 0.86× the
bulk one while their true errors were 1.8×. The default ``"max"`` fixes the prior mean at the
**largest** training log-error, so the GP's σ rises towards the largest error scale seen in
training as an atom leaves the data; near the data the posterior follows the data as before (the
validation NLL is the same to 1e-4 on mlearn Li), and the kernel's output scale starts at the
squared gap between that maximum and the mean so the posterior can reach down to the data.

Bound. The posterior-mean scale ``exp(μ + v/2)`` is a log-normal mean: with the latent
variance ``v`` large it is set by the far tail of the GP's belief, not by anything observed.
Far from the data ``v`` returns to the prior variance (the kernel's output scale), which the
``"max"`` prior starts at the squared gap between the largest and the mean training log-error
(and exact-zero errors, floored at ``ERROR_FLOOR``, widen that gap): an output scale of 15
multiplies σ by ``e^7.5 ≈ 1800`` — the 1467 eV/Å seen in a run. The head therefore evaluates

.. math::  s(x) = \\exp\\big(\\min(μ, c_{hi}) + \\min(v, s_0^2, 2\\ln F)/2 − E[\\log r]\\big),

with ``c_hi`` = the larger of the prior mean and the largest training log-error, ``s_0²`` the
output scale (prior variance) and ``F = FAR_FACTOR = 10``. Each cap has a reason: an exact GP's
posterior variance never exceeds its prior variance (the variational one can, when its
covariance S exceeds the prior's); a posterior mean above both the prior mean and every observed
log-error is the kernel expansion overshooting, not data; and the log-normal factor
``exp(v/2)`` is held to one decade — above ``v = 2 ln 10 ≈ 4.6`` (a log-error standard deviation
over 2.1, i.e. the GP cannot place the error within a factor 8 either way) it only says "unknown",
which one decade above the worst training error scale already says. Near the data
(``v`` ≪ 1, μ below the largest observation) nothing changes. So σ never exceeds
``sigma_bound_ = A · max_elements exp(c_hi + min(s_0², 2 ln F)/2 − E[log r])``: at most ten times
the calibrated Maxwell scale for which the largest training error is typical, the value an atom
the GP knows nothing about gets.

Inducing points start at k-means centres of the training features (``scipy.cluster.vq.kmeans2``,
seeded) and are optimised with the kernel and variational parameters by Adam on the
variational ELBO (``iterations`` steps, default 1000, mini-batches of ``batch_size`` atoms).

Warm refit. After a warm retrain of the potential its latent features move only a little, so
the head (``warm_start=True``, the default) refits each element's GP from its previous state
instead of from scratch: no k-means; the previous inducing points, ARD lengthscales, output
scale, noise and variational distribution carried over (inducing points and lengthscales mapped
through the change of the feature standardisation, so the kernel between inducing points, and
with it the whitened variational parameters, is unchanged); ``warm_iterations`` Adam steps
(default 200) instead of ``iterations``. A cold retrain of the potential (new features), a new
element, a changed feature width or more inducing points than the previous GP could hold all
refit cold.

dtypes: every tensor and module here is float64 explicitly, independent of torch's default
dtype (which ``nequip``'s ``set_global_state()`` changes process-wide).
"""

from __future__ import annotations

import math
import time
import warnings

import gpytorch
import numpy as np
import scipy.special
import torch
from scipy.cluster.vq import kmeans2

from ..errors import ConfigError, DataError
from .base import FAR_FACTOR, UncertaintyHead, element_groups, error_magnitudes, missing_element_error, split
from .distance import _concat_features

#: dtype of every GP tensor.
DTYPE = torch.float64
#: E[log r] for a unit-scale Maxwell variable r (chi with 3 degrees of freedom).
MAXWELL_LOG_MEAN = 0.5 * (float(scipy.special.digamma(1.5)) + math.log(2.0))
#: Error magnitudes below this (eV/Å) are clipped before the logarithm.
ERROR_FLOOR = 1e-6
#: Allowed values of ``prior_mean``: fixed at the largest training log-error, or learned.
PRIOR_MEANS = ("max", "mean")
#: Largest latent variance in the log-normal factor exp(v/2) of the scale: one decade.
LOG_VARIANCE_CAP = 2.0 * math.log(FAR_FACTOR)


def resolve_strategy(strategy) -> type:
    """A gpytorch variational strategy class from a class or its name in ``gpytorch.variational``.

    Raises
    ------
    ConfigError
        If the name is not a variational strategy of gpytorch.
    """
    base = gpytorch.variational._VariationalStrategy
    cls = getattr(gpytorch.variational, strategy, None) if isinstance(strategy, str) else strategy
    if not (isinstance(cls, type) and issubclass(cls, base)):
        allowed = sorted(n for n in dir(gpytorch.variational)
                         if isinstance(getattr(gpytorch.variational, n), type)
                         and issubclass(getattr(gpytorch.variational, n), base)
                         and "Strategy" in n)
        raise ConfigError(f"gp head: key 'strategy' is {strategy!r}, expected one of {allowed}")
    return cls


class ErrorGP(gpytorch.models.ApproximateGP):
    """Approximate GP with constant mean and an ARD RBF kernel.

    Parameters
    ----------
    inducing_points : torch.Tensor, shape (m, d)
        Initial inducing locations (float64).
    strategy : type
        A gpytorch variational strategy class, called as
        ``strategy(model, inducing_points, variational_distribution, learn_inducing_locations=True)``.
    """

    def __init__(self, inducing_points: torch.Tensor, strategy: type = gpytorch.variational.VariationalStrategy):
        m, d = inducing_points.shape
        distribution = gpytorch.variational.CholeskyVariationalDistribution(m)
        super().__init__(strategy(self, inducing_points, distribution, learn_inducing_locations=True))
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=d))

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class WhitenedPosterior:
    r"""The trained GP's predictive mean and variance in closed form, for fast per-step use.

    For gpytorch's (whitened) :class:`~gpytorch.variational.VariationalStrategy` the predictive
    distribution at ``x`` is

    .. math::

        μ(x) = c + k_{xZ} L^{-T} m, \qquad
        v(x) = k_{xx} + ε + k_{xZ} L^{-T} (S − I) L^{-1} k_{Zx},

    with ``L L^T = K_{ZZ} + εI``, ``m`` and ``S`` the whitened variational mean and covariance and
    ε the strategy's jitter — exactly what ``VariationalStrategy.forward`` computes in eval mode.
    The quantities that do not depend on ``x`` are taken from the trained model once; a call
    is then one kernel matrix, one triangular solve and two small products, without gpytorch's
    lazy-tensor bookkeeping (about 1 ms per call for a few hundred atoms). Equality with
    gpytorch is checked by the tests.

    Parameters
    ----------
    model : ErrorGP
        A trained model whose strategy is exactly ``VariationalStrategy``.
    """

    def __init__(self, model: ErrorGP) -> None:
        strategy = model.variational_strategy
        kernel = model.covar_module
        with torch.no_grad():
            self.constant = model.mean_module.constant.detach().to(DTYPE).reshape(())
            self.outputscale = kernel.outputscale.detach().to(DTYPE).reshape(())
            self.lengthscale = kernel.base_kernel.lengthscale.detach().to(DTYPE).reshape(-1)
            self.jitter = float(strategy.jitter_val)
            inducing = strategy.inducing_points.detach().to(DTYPE)
            k_zz = kernel(inducing).to_dense() + self.jitter * torch.eye(len(inducing), dtype=DTYPE)
            self.chol = torch.linalg.cholesky(k_zz)
            q = strategy.variational_distribution
            self.mean_whitened = q.mean.detach().to(DTYPE)
            self.middle = q.covariance_matrix.detach().to(DTYPE) - torch.eye(len(inducing), dtype=DTYPE)
            self.z = inducing / self.lengthscale
            self.z_sq = (self.z * self.z).sum(dim=1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance of the latent function at ``x`` (n, d), float64."""
        with torch.no_grad():
            xs = x.to(DTYPE) / self.lengthscale
            sq = (xs * xs).sum(dim=1, keepdim=True) + self.z_sq - 2.0 * xs @ self.z.T
            k_xz = self.outputscale * torch.exp(-0.5 * sq.clamp_min(0.0))
            interp = torch.linalg.solve_triangular(self.chol, k_xz.T, upper=False)
            mean = self.constant + interp.T @ self.mean_whitened
            var = self.outputscale + self.jitter + ((self.middle @ interp) * interp).sum(dim=0)
            return mean, var.clamp_min(gpytorch.settings.min_variance.value(DTYPE))


class ElementGP:
    """The GP of one element on arrays: ``fit(features, errors)``, ``scale(features)``.

    Parameters
    ----------
    num_inducing : int
        Number of inducing points (k-means centres; fewer if there are fewer atoms).
    iterations : int
        Adam steps on the ELBO.
    learning_rate : float
        Adam learning rate.
    batch_size : int
        Atoms per mini-batch (all atoms when fewer).
    seed : int
        Seeds k-means and the mini-batch order.
    strategy : type
        gpytorch variational strategy class.
    prior_mean : {"max", "mean"}
        ``"max"``: the constant prior mean is fixed at the largest training log-error (σ rises
        away from the data); ``"mean"``: it is learned (σ plateaus at the typical error).
    warm_iterations : int
        Adam steps of a fit that starts from a previous GP (``fit(..., init=previous)``).

    Attributes
    ----------
    warm_ : bool
        Whether the last :meth:`fit` started from a previous GP.
    fit_seconds_ : float
        Wall time of the last :meth:`fit`.
    """

    def __init__(self, num_inducing: int = 64, iterations: int = 1000, learning_rate: float = 0.02,
                 batch_size: int = 1024, seed: int = 0,
                 strategy: type = gpytorch.variational.VariationalStrategy, prior_mean: str = "max",
                 warm_iterations: int = 200) -> None:
        if prior_mean not in PRIOR_MEANS:
            raise ConfigError(f"gp head: key 'prior_mean' is {prior_mean!r}, expected one of {list(PRIOR_MEANS)}")
        self.prior_mean = prior_mean
        self.num_inducing = int(num_inducing)
        self.iterations = int(iterations)
        self.warm_iterations = int(warm_iterations)
        self.warm_ = False
        self.fit_seconds_ = math.nan
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.strategy = strategy
        self.model_: ErrorGP | None = None
        self.likelihood_: gpytorch.likelihoods.GaussianLikelihood | None = None
        self.x_mean_: torch.Tensor | None = None
        self.x_std_: torch.Tensor | None = None
        self.y_max_: float = math.nan
        self.loss_history_: list[float] = []
        self._posterior: WhitenedPosterior | None = None

    def _standardise(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(features), dtype=DTYPE)
        return (x - self.x_mean_) / self.x_std_

    def _build(self, inducing: torch.Tensor) -> None:
        self.model_ = ErrorGP(inducing.to(DTYPE), self.strategy).to(DTYPE)
        self.likelihood_ = gpytorch.likelihoods.GaussianLikelihood().to(DTYPE)

    def _can_continue(self, init: ElementGP | None, n: int, d: int) -> bool:
        """Whether a fit on ``n`` atoms of width ``d`` can start from ``init``."""
        if init is None or init.model_ is None or init.x_mean_ is None:
            return False
        if type(init.model_.variational_strategy) is not self.strategy or init.prior_mean != self.prior_mean:
            return False
        inducing = init.model_.variational_strategy.inducing_points
        return int(inducing.shape[1]) == d == int(init.x_mean_.shape[0]) and \
            int(inducing.shape[0]) == min(self.num_inducing, n)

    def _continue_from(self, init: ElementGP) -> None:
        """Build the model from ``init``'s state, re-expressed in this fit's standardisation.

        A standardised coordinate changes from ``(x - m0)/s0`` to ``(x - m1)/s1``; mapping the
        inducing points the same way and each lengthscale by ``s0/s1`` leaves every kernel value
        between inducing points, and so the whitened variational parameters, as they were."""
        with torch.no_grad():
            old_inducing = init.model_.variational_strategy.inducing_points.detach().to(DTYPE)
            raw = old_inducing * init.x_std_ + init.x_mean_
            inducing = (raw - self.x_mean_) / self.x_std_
            lengthscale = init.model_.covar_module.base_kernel.lengthscale.detach().to(DTYPE).reshape(1, -1)
            lengthscale = lengthscale * (init.x_std_ / self.x_std_).reshape(1, -1)
        self._build(inducing)
        self.model_.load_state_dict(init.model_.state_dict())
        self.likelihood_.load_state_dict(init.likelihood_.state_dict())
        with torch.no_grad():
            self.model_.variational_strategy.inducing_points.copy_(inducing)
        self.model_.covar_module.base_kernel.lengthscale = lengthscale.clamp_min(1e-6)

    def fit(self, features: np.ndarray, errors: np.ndarray, init: ElementGP | None = None) -> ElementGP:
        """Train on training-atom features (n, d) and force-error magnitudes (n,) in eV/Å.

        With ``init`` (a fitted GP of the same element, e.g. before the potential's last warm
        retrain), start from its state and run ``warm_iterations`` steps (module notes, "Warm
        refit"); a GP that cannot be continued (other feature width, strategy or prior mean, or
        fewer inducing points than this fit would place) is ignored: the fit starts cold."""
        start = time.perf_counter()
        features = np.asarray(features, dtype=np.float64)
        errors = np.asarray(errors, dtype=np.float64).ravel()
        n, d = features.shape
        if n < 2 or errors.shape[0] != n:
            raise DataError(f"a GP needs at least 2 atoms with matching errors, got {n} features, {errors.size} errors")
        warm = self._can_continue(init, n, d)
        self.x_mean_ = torch.as_tensor(features.mean(axis=0), dtype=DTYPE)
        self.x_std_ = torch.as_tensor(np.maximum(features.std(axis=0), 1e-8), dtype=DTYPE)
        x = self._standardise(features)
        y = torch.as_tensor(np.log(np.maximum(errors, ERROR_FLOOR)), dtype=DTYPE)
        self.y_max_ = float(y.max())
        prior = float(y.max()) if self.prior_mean == "max" else float(y.mean())

        if warm:
            self._continue_from(init)
            model, likelihood = self.model_, self.likelihood_
            if self.prior_mean == "max":
                model.mean_module.constant = torch.tensor(prior, dtype=DTYPE)
            model.mean_module.raw_constant.requires_grad_(self.prior_mean == "mean")
        else:
            k = min(self.num_inducing, n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # kmeans2 warns on empty clusters; '++' init re-seeds them
                centres, _ = kmeans2(x.numpy(), k, iter=20, minit="++", seed=np.random.default_rng(self.seed))
            self._build(torch.as_tensor(centres, dtype=DTYPE))
            model, likelihood = self.model_, self.likelihood_
            model.mean_module.constant = torch.tensor(prior, dtype=DTYPE)
            model.mean_module.raw_constant.requires_grad_(self.prior_mean == "mean")
            model.covar_module.outputscale = max(float(y.var()), (prior - float(y.mean())) ** 2, 1e-3)
            model.covar_module.base_kernel.lengthscale = math.sqrt(d)
            likelihood.noise = max(0.5 * float(y.var()), 1e-3)
        self.warm_ = warm

        model.train()
        likelihood.train()
        elbo = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=n)
        trained = [p for p in (*model.parameters(), *likelihood.parameters()) if p.requires_grad]
        optimiser = torch.optim.Adam(trained, lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        batch = min(self.batch_size, n)
        self.loss_history_ = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the variational mean's initial jitter
            for _ in range(self.warm_iterations if warm else self.iterations):
                idx = torch.randperm(n, generator=generator)[:batch] if batch < n else slice(None)
                optimiser.zero_grad()
                loss = -elbo(model(x[idx]), y[idx])
                loss.backward()
                optimiser.step()
                self.loss_history_.append(float(loss.detach()))
        self._eval()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _eval(self) -> None:
        """Eval mode, and the closed-form posterior where the strategy allows it."""
        self.model_.eval()
        self.likelihood_.eval()
        exact_type = type(self.model_.variational_strategy) is gpytorch.variational.VariationalStrategy
        self._posterior = WhitenedPosterior(self.model_) if exact_type else None

    def latent(self, features: np.ndarray, use_gpytorch: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of log error magnitude at ``features`` (n, d), each (n,).

        Uses :class:`WhitenedPosterior` for the default strategy, gpytorch's own call otherwise
        or when ``use_gpytorch`` is true.
        """
        if self.model_ is None:
            raise DataError("the GP is not fitted")
        x = self._standardise(features)
        if self._posterior is not None and not use_gpytorch:
            mean, var = self._posterior(x)
            return mean.numpy(), var.numpy()
        with torch.no_grad():
            f = self.model_(x)
            return f.mean.numpy(), f.variance.numpy()

    def _prior(self) -> tuple[float, float]:
        """(prior mean constant, prior variance = kernel output scale) of the trained model."""
        with torch.no_grad():
            constant = float(self.model_.mean_module.constant.detach().reshape(()))
            outputscale = float(self.model_.covar_module.outputscale.detach().reshape(()))
        return constant, outputscale

    def _caps(self) -> tuple[float, float]:
        """(largest latent mean, largest latent variance) used by :meth:`scale`."""
        constant, outputscale = self._prior()
        y_max = self.y_max_ if math.isfinite(self.y_max_) else constant  # heads saved without y_max
        return max(constant, y_max), min(outputscale, LOG_VARIANCE_CAP)

    @property
    def bound_(self) -> float:
        """Largest value :meth:`scale` returns (eV/Å, before the head's calibration prefactor):
        ``exp(c_hi + min(s_0², 2 ln FAR_FACTOR)/2 − E[log r])`` (module notes)."""
        if self.model_ is None:
            raise DataError("the GP is not fitted")
        mu_cap, var_cap = self._caps()
        return float(math.exp(mu_cap + 0.5 * var_cap - MAXWELL_LOG_MEAN))

    def scale(self, features: np.ndarray) -> np.ndarray:
        """Posterior-mean Maxwell scale ``exp(μ + v/2 − E[log r])`` in eV/Å, shape (n,), with
        μ and v capped as in the module notes (so at most :attr:`bound_`)."""
        mu, var = self.latent(features)
        mu_cap, var_cap = self._caps()
        return np.exp(np.minimum(mu, mu_cap) + 0.5 * np.minimum(var, var_cap) - MAXWELL_LOG_MEAN)

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict:
        """Tensors describing the fitted GP."""
        return {
            "model": self.model_.state_dict(),
            "likelihood": self.likelihood_.state_dict(),
            "x_mean": self.x_mean_,
            "x_std": self.x_std_,
            "y_max": torch.tensor(self.y_max_, dtype=DTYPE),
        }

    def set_state(self, state: dict) -> ElementGP:
        """Restore what :meth:`state` returned."""
        self.x_mean_ = state["x_mean"].to(DTYPE)
        self.x_std_ = state["x_std"].to(DTYPE)
        self.y_max_ = float(state["y_max"]) if "y_max" in state else math.nan  # older saves: no y_max
        inducing = state["model"]["variational_strategy.inducing_points"]
        self._build(torch.zeros_like(inducing, dtype=DTYPE))
        self.model_.load_state_dict(state["model"])
        self.likelihood_.load_state_dict(state["likelihood"])
        self._eval()
        return self


class SparseGPHead(UncertaintyHead):
    """Sparse-GP head: one :class:`ElementGP` per element on the potential's latent features.

    Trained on the training frames' per-atom error magnitudes, calibrated (prefactor A) on the
    validation frames. σ is at most ``sigma_bound_ = A · max_z gps_[z].bound_``: ten times
    (``FAR_FACTOR``) the calibrated Maxwell scale at which the largest training error is typical,
    or less (module notes, "Bound"); an atom far from every training atom gets that value.

    Parameters
    ----------
    strategy : type or str, default ``gpytorch.variational.VariationalStrategy``
        Variational strategy class (or its name in ``gpytorch.variational``).
    num_inducing : int, default 64
    iterations : int, default 1000
    learning_rate : float, default 0.02
    batch_size : int, default 1024
    seed : int, default 0
    prior_mean : {"max", "mean"}, default "max"
        What σ returns to away from the training data: the largest training error scale
        (``"max"``) or the typical one (``"mean"``, the paper's GP); see the module docstring.
    warm_start : bool, default True
        Refit each element's GP from its previous state when the head is refitted for the same
        potential right after a warm retrain of it (module notes, "Warm refit"); False: every
        fit starts from k-means and the initial hyperparameters.
    warm_iterations : int, default 200
        Adam steps of such a warm refit.

    Attributes
    ----------
    warm_refit_ : bool
        Whether the last fit started every element's GP from its previous state.
    """

    name = "gp"
    needs_features = True

    def __init__(self, strategy=gpytorch.variational.VariationalStrategy, num_inducing: int = 64,
                 iterations: int = 1000, learning_rate: float = 0.02, batch_size: int = 1024,
                 seed: int = 0, prior_mean: str = "max", warm_start: bool = True,
                 warm_iterations: int = 200) -> None:
        self.strategy = resolve_strategy(strategy)
        if prior_mean not in PRIOR_MEANS:
            raise ConfigError(f"gp head: key 'prior_mean' is {prior_mean!r}, expected one of {list(PRIOR_MEANS)}")
        if not isinstance(warm_start, bool):
            raise ConfigError(f"gp head: key 'warm_start' is {warm_start!r}, expected true or false")
        if isinstance(warm_iterations, bool) or not isinstance(warm_iterations, int) or warm_iterations < 1:
            raise ConfigError(f"gp head: key 'warm_iterations' is {warm_iterations!r}, "
                              "expected an integer >= 1")
        super().__init__(num_inducing=int(num_inducing), iterations=int(iterations),
                         learning_rate=float(learning_rate), batch_size=int(batch_size), seed=int(seed),
                         prior_mean=prior_mean, warm_start=warm_start, warm_iterations=int(warm_iterations))
        self.gps_: dict[int, ElementGP] = {}
        self.warm_refit_ = False
        self._previous_potential = None

    def _element_gp(self) -> ElementGP:
        keys = ("num_inducing", "iterations", "learning_rate", "batch_size", "seed", "prior_mean",
                "warm_iterations")
        return ElementGP(strategy=self.strategy, **{k: self.settings[k] for k in keys})

    def fit(self, potential, train_frames, val_frames, *, train_predictions=None, val_predictions=None):
        """:meth:`UncertaintyHead.fit`; a refit for the same potential after a warm retrain of it
        continues each element's GP (``warm_start``)."""
        self._previous_potential = self.potential_
        try:
            return super().fit(potential, train_frames, val_frames, train_predictions=train_predictions,
                               val_predictions=val_predictions)
        finally:
            self._previous_potential = None

    def _continues(self, potential) -> bool:
        """Whether this fit may start from the previous GPs: same potential object, whose last fit
        was a warm (fine-tuning) one."""
        history = getattr(potential, "history", None)
        return bool(self.settings.get("warm_start", True) and self.gps_
                    and self._previous_potential is potential
                    and history is not None and history.warm_start)

    def _fit(self, train_frames, train_predictions, val_frames, val_predictions) -> None:
        previous = self.gps_ if self._continues(self.potential_) else {}
        features, numbers = _concat_features(train_frames, train_predictions)
        errors = np.concatenate(error_magnitudes(train_frames, train_predictions))
        self.gps_ = {z: self._element_gp().fit(features[idx], errors[idx], init=previous.get(z))
                     for z, idx in element_groups(numbers).items()}
        self.warm_refit_ = bool(self.gps_) and all(gp.warm_ for gp in self.gps_.values())

    def _raw_sigma(self, frames, predictions) -> list[np.ndarray]:
        features, numbers = _concat_features(frames, predictions)
        out = np.empty(len(numbers), dtype=np.float64)
        for z, idx in element_groups(numbers).items():
            if z not in self.gps_:
                raise missing_element_error(z, "sparse-GP head")
            out[idx] = self.gps_[z].scale(features[idx])
        return split(out, frames)

    def _sigma_bound(self, val_frames, val_predictions) -> float:
        return self.scale_ * max(gp.bound_ for gp in self.gps_.values()) if self.gps_ else math.inf

    def _json_settings(self) -> dict:
        return {"strategy": self.strategy.__name__, **self.settings}

    def _state(self, directory) -> dict:
        return {f"gp_{z}": gp.state() for z, gp in self.gps_.items()}

    def _set_state(self, state, directory) -> None:
        self.gps_ = {int(key.split("_")[1]): self._element_gp().set_state(value)
                     for key, value in state.items()}

