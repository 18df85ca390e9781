"""AR-Net for time series, beside the classic least-squares AR(p).

Triebe, Laptev, Rajagopal 2019, "AR-Net: A simple Auto-Regressive Neural Network for time-series".
AR(p) predicts y_t = c + sum_k w_k y_{t-k} + noise. Classic-AR solves least squares; AR-Net learns
the same linear map by SGD with a sparsity regulariser, so p can be over-specified cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from minigen.data import make_loader
from minigen.train import fit

# --- AR(p) processes with known coefficients ------------------------------------------


def ar_roots(coeffs) -> np.ndarray:
    """Roots of z^p - w_1 z^(p-1) - ... - w_p; the process is stationary iff all |root| < 1
    (equivalently, the lag polynomial 1 - sum_k w_k L^k has all its roots outside the unit circle)."""
    w = np.asarray(coeffs, dtype=float)
    return np.roots(np.concatenate([[1.0], -w])) if w.size else np.zeros(0)


def is_stationary(coeffs) -> bool:
    roots = ar_roots(coeffs)
    return bool(roots.size == 0 or np.abs(roots).max() < 1.0)


def random_ar_coeffs(p: int, seed: int = 0, abs_sum: float = 0.9) -> np.ndarray:
    """Dense AR(p) coefficients, uniform in [-1, 1] then rescaled so that sum |w| = abs_sum < 1,
    which guarantees stationarity (the roots are checked all the same)."""
    _check_order(p)
    if not 0 < abs_sum < 1:
        raise ValueError(f"abs_sum must lie in (0, 1) to guarantee stationarity, got {abs_sum}")
    w = np.random.default_rng(seed).uniform(-1, 1, p)
    w *= abs_sum / np.abs(w).sum()
    assert is_stationary(w)
    return w


def sparse_ar_coeffs(lag_values: dict[int, float], p: int | None = None) -> np.ndarray:
    """Coefficients that are zero except at the given lags, e.g. {1: 0.2, 3: 0.3, 10: -0.5}."""
    if not lag_values or min(lag_values) < 1:
        raise ValueError(f"lags must be integers >= 1, got {sorted(lag_values)}")
    p = p or max(lag_values)
    if max(lag_values) > p:
        raise ValueError(f"lag {max(lag_values)} exceeds the order p={p}")
    w = np.zeros(p)
    for lag, value in lag_values.items():
        w[lag - 1] = value
    return w


def check_noise_std(noise_std) -> float:
    """The standard deviation of Gaussian noise: a finite number >= 0."""
    if (
        isinstance(noise_std, bool)
        or not isinstance(noise_std, (int, float, np.floating))
        or not np.isfinite(noise_std)
        or noise_std < 0
    ):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return float(noise_std)


def check_forecast_args(history, horizon: int, p: int) -> list:
    """The newest p values of a finite history, newest first, for a forecast of `horizon` >= 1 steps."""
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    lags = np.asarray(history, dtype=float)[::-1][:p]
    if lags.size < p:
        raise ValueError(f"history needs at least p={p} values, got {lags.size}")
    if not np.isfinite(lags).all():
        raise ValueError(f"the last {p} values of the history contain NaN or infinite values")
    return list(lags)


def generate_ar(coeffs, n: int, noise_std: float = 1.0, seed: int = 0, burn_in: int = 1000) -> np.ndarray:
    """n samples of a stationary AR process with Gaussian noise, after a burn-in that forgets the zero start."""
    noise_std = check_noise_std(noise_std)
    w = np.asarray(coeffs, dtype=float)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"coeffs must be a non-empty 1-D array, got shape {w.shape}")
    if not is_stationary(w):
        raise ValueError(f"the AR process with coefficients {w} is not stationary (a root has |z| >= 1)")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = w.size
    noise = np.random.default_rng(seed).normal(0.0, noise_std, burn_in + n)
    y = np.zeros(burn_in + n + p)
    for t in range(burn_in + n):
        y[t + p] = w @ y[t : t + p][::-1] + noise[t]  # lags 1..p, newest first
    return y[p + burn_in :]


# --- shared pieces: lagged windows and metrics -----------------------------------------


def _check_order(p):
    if not isinstance(p, (int, np.integer)) or p < 1:
        raise ValueError(f"the AR order p must be a positive integer, got {p!r}")


def lag_matrix(series, p: int, n_forecasts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows of a 1-D series: X (N, p) with X[:, k] = y_{t-1-k} (lag k + 1), targets Y (N, n_forecasts)."""
    _check_order(p)
    if not isinstance(n_forecasts, (int, np.integer)) or n_forecasts < 1:
        raise ValueError(f"n_forecasts must be a positive integer, got {n_forecasts!r}")
    y = np.asarray(series, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"the series must be 1-D, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"the series contains {int((~np.isfinite(y)).sum())} NaN or infinite values")
    if y.size < p + n_forecasts + 1:
        raise ValueError(
            f"a series of {y.size} values is too short for p={p} lags and {n_forecasts} "
            f"forecast(s): need at least {p + n_forecasts + 1}"
        )
    windows = np.lib.stride_tricks.sliding_window_view(y, p + n_forecasts)  # (N, p + h)
    return windows[:, :p][:, ::-1].copy(), windows[:, p:].copy()


def stpe(estimated, true) -> float:
    """Symmetric total percentage error of coefficients (AR-Net paper), 0 = perfect, 100 = unrelated.
    The shorter vector is padded with zeros, so an over-specified fit is compared on all its lags."""
    a, b = np.asarray(estimated, dtype=float).ravel(), np.asarray(true, dtype=float).ravel()
    n = max(a.size, b.size)
    a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    return float(100 * np.abs(a - b).sum() / (np.abs(a) + np.abs(b)).sum())


# --- Classic-AR --------------------------------------------------------------------------


@dataclass
class ClassicAR:
    """AR(p) fitted by ordinary least squares on the lagged windows."""

    coeffs: np.ndarray  # (p,) w_1 .. w_p
    intercept: float

    @classmethod
    def fit(cls, series, p: int) -> ClassicAR:
        X, Y = lag_matrix(series, p)
        design = np.hstack([X, np.ones((X.shape[0], 1))])  # (N, p + 1)
        solution, *_ = np.linalg.lstsq(design, Y[:, 0], rcond=None)
        return cls(coeffs=solution[:p], intercept=float(solution[p]))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coeffs + self.intercept  # (N,)

    def forecast(self, history, horizon: int) -> np.ndarray:
        """Multi-step forecast by feeding each prediction back in as the newest lag."""
        lags = check_forecast_args(history, horizon, self.coeffs.size)
        out = []
        for _ in range(horizon):
            out.append(float(np.dot(self.coeffs, lags)) + self.intercept)
            lags = [out[-1]] + lags[:-1]
        return np.array(out)


# --- AR-Net ------------------------------------------------------------------------------


@dataclass
class ARNetConfig:
    p: int = 10  # number of lags fed to the network
    n_forecasts: int = 1  # steps predicted at once (direct multi-step forecasting)
    hidden: tuple = ()  # hidden layer widths; () = the linear AR-Net of the paper
    sparsity: float | None = None  # estimated fraction of non-zero coefficients; None or 1 = no regulariser
    c1: float = 3.0  # steepness of the regulariser
    c2: float = 3.0  # root applied to |w|: > 1 flattens the penalty near the true non-zero values
    c_lambda: float = 0.1  # scale of lambda(s) = c_lambda * (1/s - 1); 0.1 keeps true weights unshrunk (notebook 08)
    reg_start: int = 0  # training step where the regulariser starts ramping in
    reg_full: int = 0  # step from which it has full weight


class ARNet(nn.Module):
    """y_t..y_{t+h-1} predicted from the p previous values by a linear layer (or a small MLP)."""

    Config = ARNetConfig

    def __init__(self, config: ARNetConfig):
        super().__init__()
        _check_order(config.p)
        if config.sparsity is not None and not 0 < config.sparsity <= 1:
            raise ValueError(f"sparsity must lie in (0, 1], got {config.sparsity}")
        self.config = config
        widths = [config.p, *config.hidden, config.n_forecasts]
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        if not config.hidden:
            nn.init.zeros_(self.net[0].weight)  # start from "no dependence on any lag"
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)
        # residual standard deviation, set after fitting; sample() simulates with it
        self.register_buffer("noise_std", torch.ones(()))

    def forward(self, lags: torch.Tensor) -> torch.Tensor:
        """Lags (B, p), newest first -> forecasts (B, n_forecasts)."""
        if lags.dim() != 2 or lags.shape[1] != self.config.p:
            raise ValueError(f"expected lags (B, {self.config.p}), got {tuple(lags.shape)}")
        return self.net(lags)

    @property
    def coeffs(self) -> np.ndarray:
        """The first layer's weights on the lags: (p,) for one-step AR-Net, (n_forecasts, p) otherwise."""
        w = self.net[0].weight.detach().cpu().numpy()
        return w[0] if w.shape[0] == 1 else w

    def regulariser(self) -> torch.Tensor:
        """R(w) = mean_i [2 / (1 + exp(-c1 |w_i|^(1/c2))) - 1]: about |w|^(1/3) near 0, saturating at 1."""
        w = self.net[0].weight.abs()
        return (2 * torch.sigmoid(self.config.c1 * (w + 1e-12) ** (1 / self.config.c2)) - 1).mean()

    def reg_weight(self) -> float:
        """lambda(s) times the ramp factor at the current training step."""
        cfg = self.config
        if cfg.sparsity is None or cfg.sparsity >= 1:
            return 0.0
        lam = cfg.c_lambda * (1 / cfg.sparsity - 1)
        if cfg.reg_full <= cfg.reg_start:
            return lam if int(self.step) >= cfg.reg_start else 0.0
        return lam * min(1.0, max(0.0, (int(self.step) - cfg.reg_start) / (cfg.reg_full - cfg.reg_start)))

    def loss(self, batch) -> torch.Tensor:
        lags, targets = batch
        mse = F.mse_loss(self(lags), targets)
        weight = self.reg_weight()
        if self.training:
            self.step += 1
        return mse + weight * self.regulariser() if weight > 0 else mse

    @torch.no_grad()
    def predict(self, X) -> np.ndarray:
        device = next(self.parameters()).device
        return self(torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=device)).cpu().numpy()

    @torch.no_grad()
    def forecast(self, history, horizon: int) -> np.ndarray:
        """Multi-step forecast: direct for the first n_forecasts steps, then fed back in."""
        lags = check_forecast_args(history, horizon, self.config.p)
        out: list[float] = []
        while len(out) < horizon:
            step = self.predict(np.array([lags]))[0]  # (n_forecasts,)
            out.extend(step.tolist())
            lags = (list(step[::-1]) + lags)[: self.config.p]
        return np.array(out[:horizon])

    @torch.no_grad()
    def sample(self, n: int, *, length: int = 200, noise_std: float | None = None, generator=None) -> torch.Tensor:
        """Simulate n series (n, length) from the fitted one-step model plus Gaussian noise
        (by default with the residual standard deviation measured after fitting)."""
        if self.config.n_forecasts != 1:
            raise ValueError("simulation needs a one-step model (n_forecasts=1)")
        if not isinstance(n, int) or n < 1 or not isinstance(length, int) or length < 1:
            raise ValueError(f"n and length must be positive integers, got {n!r}, {length!r}")
        noise_std = check_noise_std(float(self.noise_std) if noise_std is None else noise_std)
        device = next(self.parameters()).device
        lags = torch.zeros(n, self.config.p, device=device)
        noise_device = generator.device if generator is not None else device  # a generator draws on its own device
        out = []
        for _ in range(length + self.config.p):
            noise = torch.randn(n, generator=generator, device=noise_device).to(device) * noise_std
            nxt = self(lags)[:, 0] + noise  # (n,)
            out.append(nxt)
            lags = torch.cat([nxt[:, None], lags[:, :-1]], dim=1)
        return torch.stack(out[self.config.p :], dim=1)  # (n, length)


def train_arnet(
    model: ARNet,
    series,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
    device="cpu",
    progress: bool = False,
) -> dict:
    """Train an ARNet on the lagged windows of a series with minigen's loop; returns the history."""
    X, Y = lag_matrix(series, model.config.p, model.config.n_forecasts)
    data = TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32))
    model.step.zero_()
    # the cosine schedule ends at zero: with Adam, superfluous weights jitter around zero with an
    # amplitude of about the learning rate, so it must vanish for them to settle there
    history = fit(
        model,
        make_loader(data, min(batch_size, len(data)), seed=seed),
        steps=steps,
        lr=lr,
        min_lr_ratio=0.0,
        weight_decay=0.0,
        device=device,
        progress=progress,
        desc=f"AR-Net p={model.config.p}",
    )
    residual = Y[:, 0] - model.predict(X)[:, 0]
    model.noise_std.fill_(float(residual.std()))
    return history


def fit_arnet(
    series,
    p: int,
    *,
    n_forecasts: int = 1,
    sparsity: float | None = None,
    hidden: tuple = (),
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-2,
    c_lambda: float = 0.1,
    seed: int = 0,
    device="cpu",
    progress: bool = False,
) -> ARNet:
    """Build and fit AR-Net. The regulariser ramps in between 20% and 60% of training: the weights
    first find the signal, then the small ones are pushed to zero (the paper delays it likewise)."""
    lag_matrix(series, p, n_forecasts)  # validate before building anything
    torch.manual_seed(seed)
    config = ARNetConfig(
        p=p,
        n_forecasts=n_forecasts,
        hidden=tuple(hidden),
        sparsity=sparsity,
        c_lambda=c_lambda,
        reg_start=int(0.2 * steps),
        reg_full=int(0.6 * steps),
    )
    model = ARNet(config)
    train_arnet(model, series, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device, progress=progress)
    return model


# --- presets ------------------------------------------------------------------------------

# python -m minigen train arnet (minigen.cli): a generated sparse process fitted with p lags, n values long
PRESETS = {
    "smoke": dict(config=dict(p=20, sparsity=3 / 20), steps=300, batch_size=256, lr=1e-2, n=2000),
    "cpu": dict(config=dict(p=50, sparsity=3 / 50), steps=2000, batch_size=256, lr=1e-2, n=10000),
    "gpu": dict(config=dict(p=50, sparsity=3 / 50), steps=2000, batch_size=256, lr=1e-2, n=10000),
}
DATA = None  # not images: the CLI generates its own series
