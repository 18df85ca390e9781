"""Distilled decoding, DD1 (Liu et al. 2024, arXiv 2412.17153): the teacher's whole sampling as a map from noise.

Each token is drawn by a flow, not a die: Gaussian noise in the codebook's space flows along straight paths to the
code embeddings, weighted by the AR teacher's categorical, and the velocity of that flow has a closed form. Given
the noise, the teacher's sampling is deterministic (noise -> image); a student can learn that map in one pass.
A student, started from the teacher's weights, reads the whole noise sequence in one pass and predicts every token;
for two steps it also learns the trajectory's midpoint, the first tokens known and the rest still noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.data import make_loader
from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, eval_mode, progress_bar
from minigen.sampling import check_labels
from minigen.speculative import make_decoder
from minigen.token_ar import TokenModelConfig
from minigen.tokenizers import OnTokenizer, VQConfig
from minigen.train import seed_everything, train_or_load

TOKENIZER = "vq"


def code_embeddings(codebook: torch.Tensor) -> torch.Tensor:
    """A tokenizer's codebook (V, D) scaled to unit root-mean-square, the scale of the noise it is reached from."""
    if codebook.dim() != 2 or codebook.shape[0] < 2:
        raise ValueError(f"codebook must be (V >= 2, D), got {tuple(codebook.shape)}")
    return codebook / codebook.float().pow(2).mean().sqrt().clamp_min(1e-12)


def model_codes(model) -> torch.Tensor:
    """The code embeddings (V, D) of a model's own tokenizer: its codebook at unit root-mean-square, fp32."""
    return code_embeddings(model.tokenizer.quantizer.codebook.weight.detach().float())


def categorical_velocity(x: torch.Tensor, t: float, probs: torch.Tensor, codes: torch.Tensor):
    """The exact velocity E[eps - c | x_t = x] of straight paths x_t = (1 - t) c + t eps from codes c ~ probs to
    noise eps ~ N(0, I), and the posterior over codes it averages: x (N, D), t in (0, 1], probs (N, V),
    codes (V, D) -> velocity (N, D), posterior (N, V). With the posterior mean c_hat, the velocity is
    (x - c_hat) / t."""
    d2 = torch.cdist(x, (1 - t) * codes) ** 2  # (N, V)
    posterior = (probs.clamp_min(1e-30).log() - d2 / (2 * t * t)).softmax(-1)  # (N, V); zero probs stay ~0
    posterior = posterior * (probs > 0)  # exactly 0 where the teacher says 0
    posterior = posterior / posterior.sum(-1, keepdim=True)
    return (x - posterior @ codes) / t, posterior


def flow_to_tokens(noise: torch.Tensor, probs: torch.Tensor, codes: torch.Tensor, steps: int = 32) -> torch.Tensor:
    """Tokens (N,) that noise (N, D) flows to under probs (N, V): `steps` Heun steps from t = 1 towards 0 (t = 0
    itself, where the velocity is singular, is never visited), then the most probable code under the posterior at
    the last time. Deterministic given the noise; over noise drawn from N(0, I) the tokens follow probs up to the
    discretisation (total variation below 0.004 at 16 steps on a 6-code test, where Euler needs over 64)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if noise.shape[-1] != codes.shape[-1] or probs.shape != (noise.shape[0], codes.shape[0]):
        raise ValueError(
            f"need noise (N, D), probs (N, V), codes (V, D); got {tuple(noise.shape)}, {tuple(probs.shape)}, "
            f"{tuple(codes.shape)}"
        )
    x, probs, codes = noise.double(), probs.double(), codes.double()  # the posterior sharpens as 1 / t^2
    times = torch.linspace(1.0, 0.0, steps + 2).tolist()[:-1]  # steps + 1 times, the last one 1 / (steps + 1)
    for t, t_next in zip(times[:-1], times[1:]):
        velocity, _ = categorical_velocity(x, t, probs, codes)
        ahead, _ = categorical_velocity(x + (t_next - t) * velocity, t_next, probs, codes)
        x = x + (t_next - t) * 0.5 * (velocity + ahead)
    _, posterior = categorical_velocity(x, times[-1], probs, codes)
    return posterior.argmax(-1)  # (N,)


@torch.no_grad()
def teacher_map(
    teacher, noise: torch.Tensor, labels=None, codes: torch.Tensor | None = None, steps: int = 32, **sampling
):
    """The AR teacher's sampling as a function of noise (n, L, D): token i flows from noise[:, i] under the
    teacher's (warped, guided) categorical given tokens < i. Returns tokens (n, L). codes (V, D) default to the
    teacher's tokenizer codebook, scaled by code_embeddings."""
    if codes is None:
        codes = code_embeddings(teacher.tokenizer.quantizer.codebook.weight.detach())
    n, length, dim = noise.shape
    if length != teacher.seq_len or dim != codes.shape[1]:
        raise ValueError(f"noise must be (n, {teacher.seq_len}, {codes.shape[1]}), got {tuple(noise.shape)}")
    was_training = teacher.training
    teacher.eval()
    try:
        decoder = make_decoder(teacher, n, labels, sampling)
        codes = codes.to(noise.device)
        probs = decoder.feed(torch.zeros(n, 0, dtype=torch.long, device=decoder.device))[:, -1]  # (n, V)
        tokens = []
        for i in range(length):
            token = flow_to_tokens(noise[:, i], probs.to(noise.device), codes, steps)  # (n,)
            tokens.append(token)
            if i + 1 < length:
                probs = decoder.feed(token[:, None].to(decoder.device))[:, -1]
    finally:
        teacher.train(was_training)
    return torch.stack(tokens, 1)  # (n, L)


@torch.no_grad()
def make_pairs(
    teacher, n: int, *, batch: int = 500, steps: int = 16, seed: int = 0, progress: bool = False, **sampling
):
    """The distillation set: n class-balanced (noise (n, L, D), labels (n,), tokens (n, L)) triples, tokens =
    teacher_map(noise). Noise is drawn on the CPU from `seed`, so the same call gives the same set anywhere."""
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be positive, got {n}, {batch}")
    codes = model_codes(teacher).cpu()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, teacher.seq_len, codes.shape[1], generator=g)  # (n, L, D)
    labels = torch.arange(n) % teacher.n_classes if teacher.n_classes else None
    device = next(teacher.parameters()).device
    tokens = []
    for start in progress_bar(range(0, n, batch), progress, desc="teacher pairs"):
        y = None if labels is None else labels[start : start + batch].to(device)
        tokens.append(
            teacher_map(teacher, noise[start : start + batch].to(device), y, codes.to(device), steps, **sampling).cpu()
        )
    return noise, labels, torch.cat(tokens)


class TeacherPairs(torch.utils.data.Dataset):
    """make_pairs as a dataset, made on the first item asked for: a notebook that finds finished or shipped
    student weights never pays for the teacher's sampling."""

    def __init__(self, teacher, n: int, **pair_kwargs):
        self.teacher, self.n, self.pair_kwargs, self.pairs = teacher, n, pair_kwargs, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if self.pairs is None:
            self.pairs = make_pairs(self.teacher, self.n, **self.pair_kwargs)
        noise, labels, tokens = self.pairs
        return noise[i], labels[i], tokens[i]


@dataclass
class DDConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(VQConfig()))  # the frozen VQ-VAE's config
    class_drop: float = 0.0  # no guidance: the teacher's (if any) is inside the pairs
    prefix: int = 21  # two-step sampling keeps the first `prefix` tokens of step 1 (3 of 7 rows) and redraws the rest
    two_step_share: float = 0.5  # share of training rows shown the midpoint (prefix known) instead of pure noise
    teacher_cfg_scale: float = 1.0  # the guidance the teacher sampled with when its pairs were made: a record


class DDStudent(OnTokenizer, nn.Module):
    """One pass from a noise sequence (and the class) to all L tokens: the teacher's transformer, causal as it
    is, reading at place i a noise vector (token i still to be drawn) or a known token's code embedding.

    The teacher map sends noise (eps_1 .. eps_L) through the states (c_1 .. c_k, eps_k+1 .. eps_L), k = 1 .. L:
    the first k tokens drawn, the rest still noise, and the tokens after k depend on that state alone. So one
    network learns both the jump from k = 0 (one step) and from the midpoint k = prefix (the second step). Token
    i depends on eps_1 .. eps_i only, so causal attention loses nothing, and the student can start from the
    teacher's weights (init_from), as the paper's does."""

    Config = DDConfig

    def __init__(self, config: DDConfig):
        super().__init__()
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(VQConfig(**config.tokenizer))
        if not 0 < config.prefix < self.seq_len:
            raise ValueError(f"prefix must lie in 1 .. {self.seq_len - 1}, got {config.prefix}")
        self.code_dim = self.tokenizer.quantizer.codebook.weight.shape[1]
        cfg = TransformerConfig(config.n_layer, config.n_head, config.n_embd, self.seq_len, "learned", config.dropout)
        self.transformer = Transformer(cfg)  # the teacher's shapes, so that its weights fit
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.input_proj = nn.Linear(self.code_dim, config.n_embd)
        self.known_emb = nn.Embedding(2, config.n_embd)  # noise or a known token: the norm alone would not say
        self.head = nn.Linear(config.n_embd, self.vocab_size)

    def init_from(self, teacher) -> DDStudent:
        """Start from the teacher's transformer, class embedding and output head (same sizes required); only the
        input layer, noise and codes in place of token embeddings, starts fresh."""
        for name in ("transformer", "class_emb", "head"):
            mine, theirs = getattr(self, name).state_dict(), getattr(teacher, name).state_dict()
            if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in theirs.items()}:
                raise ValueError(f"the teacher's {name} has other sizes than the student's: give both one config")
            getattr(self, name).load_state_dict(theirs)
        return self

    def codes(self) -> torch.Tensor:
        return model_codes(self)  # (V, D)

    def midpoint(self, noise: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state after `prefix` tokens: their code embeddings, then the rest of the noise (B, L, D), and
        which places are known (B, L)."""
        known = (torch.arange(self.seq_len, device=noise.device) < self.config.prefix).expand(len(noise), -1)
        return torch.where(known[..., None], self.codes()[tokens], noise), known  # (B, L, D), (B, L)

    def forward(self, x: torch.Tensor, known: torch.Tensor, labels=None) -> torch.Tensor:
        """States x (B, L, D) with known (B, L) -> logits (B, L, V) of the teacher's tokens."""
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.seq_len, self.code_dim):
            raise ValueError(f"expected states (B, {self.seq_len}, {self.code_dim}), got {tuple(x.shape)}")
        start = self.class_emb(labels if self.n_classes else None, batch=len(x))  # (B, C)
        h = self.input_proj(x) + self.known_emb(known.long())  # (B, L, C)
        h = torch.cat([h[:, :1] + start[:, None], h[:, 1:]], 1)  # the class enters at place 0, as the teacher's
        return self.head(self.transformer(h, mask="causal"))  # (B, L, V): place i sees x_1 .. x_i

    def loss(self, batch) -> torch.Tensor:
        """Cross-entropy against the teacher's tokens: from pure noise, or (a two_step_share of rows) from the
        midpoint, scored on the tokens still to draw."""
        noise, labels, tokens = batch
        tokens = self.tokenizer.check_tokens(tokens.view(-1, self.grid, self.grid)).flatten(1)  # (B, L)
        mid, known = self.midpoint(noise, tokens)
        use_mid = torch.rand(len(noise), device=noise.device) < self.config.two_step_share  # (B,)
        x = torch.where(use_mid[:, None, None], mid, noise)  # (B, L, D)
        known = known & use_mid[:, None]  # (B, L)
        ce = F.cross_entropy(self(x, known, labels).transpose(1, 2), tokens, reduction="none")  # (B, L)
        return (ce * ~known).sum() / (~known).sum()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        steps: int = 1,
        generator=None,
        progress: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """n images in `steps` (1 or 2) passes: noise -> all tokens; with two, keep the first `prefix` tokens,
        put them in place of their noise and draw the rest again. return_trace=True also returns {"tokens"
        after each pass, "passes"}."""
        if steps not in (1, 2):
            raise ValueError(f"steps must be 1 or 2, got {steps!r}")
        device = self.head.weight.device
        labels, _ = self.class_emb.sampling_labels(n, labels) if self.n_classes else (None, False)
        noise = torch.randn(n, self.seq_len, self.code_dim, generator=generator).to(device)  # (n, L, D)
        with eval_mode(self):
            known = torch.zeros(n, self.seq_len, dtype=torch.bool, device=device)
            passes = [self(noise, known, labels).argmax(-1)]  # (n, L)
            for _ in progress_bar(range(steps - 1), progress, desc="second pass"):
                x, known = self.midpoint(noise, passes[-1])
                passes.append(torch.where(known, passes[-1], self(x, known, labels).argmax(-1)))
        tokens = passes[-1]
        out = tokens.view(n, self.grid, self.grid) if return_tokens else self.to_images(tokens)
        if not return_trace:
            return out
        return out, {"tokens": torch.stack(passes).cpu(), "passes": steps}


class MarginalBaseline(OnTokenizer, nn.Module):
    """The one-step baseline DD's paper shows failing: every token drawn at once and independently, from its
    place's marginal given the class, counted on the training tokens. The best any independent model can do."""

    def __init__(self, tokenizer, n_classes: int = 10):
        super().__init__()
        self.attach_tokenizer(tokenizer.config)
        self.set_tokenizer(tokenizer)  # a copy of the trained tokenizer's weights, to decode with
        self.n_classes = n_classes
        self.register_buffer("probs", torch.full((n_classes, self.seq_len, self.vocab_size), 1 / self.vocab_size))

    def fit(self, tokens: torch.Tensor, labels: torch.Tensor) -> MarginalBaseline:
        """Per-class, per-place token frequencies of tokens (N, L) or (N, g, g) with labels (N,)."""
        device = self.probs.device
        tokens = self.to_tokens(tokens.to(device))  # (N, L), checked
        labels = check_labels(labels, self.n_classes, len(tokens)).to(device)  # (N,)
        counts = torch.zeros_like(self.probs)  # (K, L, V)
        places = torch.arange(self.seq_len, device=device).expand_as(tokens)
        counts.index_put_(
            (labels[:, None].expand_as(tokens), places, tokens),
            torch.ones_like(tokens, dtype=counts.dtype),
            accumulate=True,
        )
        self.probs = counts / counts.sum(-1, keepdim=True).clamp_min(1)
        return self

    @torch.no_grad()
    def sample(self, n: int, labels=None, *, generator=None, return_tokens: bool = False):
        labels = torch.arange(n) % self.n_classes if labels is None else check_labels(labels, self.n_classes, n).cpu()
        probs = self.probs[labels].flatten(0, 1).cpu()  # (n * L, V)
        tokens = torch.multinomial(probs, 1, generator=generator).view(n, self.seq_len).to(self.probs.device)
        return tokens.view(n, self.grid, self.grid) if return_tokens else self.to_images(tokens)


def train_student(teacher, preset_name: str, path, device=None, cfg_scale: float = 1.0, seed: int = 1):
    """A student of `teacher` (sampling at cfg_scale) trained with the preset's recipe, as notebook 12 trains it:
    from the teacher's weights, on the teacher's pairs (made only if there is training to do); a finished
    checkpoint at `path` is reused. Returns (student, history)."""
    recipe = PRESETS[preset_name]
    seed_everything(0)
    config = {**recipe["config"], "teacher_cfg_scale": cfg_scale}
    student = DDStudent.from_tokenizer(teacher.tokenizer, **config).init_from(teacher).to(device)
    pairs = TeacherPairs(teacher, recipe["pairs"], cfg_scale=cfg_scale, seed=seed)
    history = train_or_load(
        student,
        path,
        make_loader(pairs, recipe["batch_size"]),
        steps=recipe["steps"],
        lr=recipe["lr"],
        ema_decay=recipe.get("ema"),
        device=device,
        desc="DD student",
    )
    return student.eval(), history


PRESETS = {  # the teacher's size (notebook 03), so that a pass costs the same
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3, pairs=64),
    "cpu": dict(
        config=dict(n_layer=4, n_head=4, n_embd=128), steps=3000, batch_size=64, lr=5e-4, ema=0.998, pairs=40000
    ),
    "gpu": dict(
        config=dict(n_layer=8, n_head=8, n_embd=256), steps=6000, batch_size=128, lr=5e-4, ema=0.999, pairs=100000
    ),
}
DATA = None  # trained on the teacher's (noise, tokens) pairs, not on images: make_pairs
TEACHER = "token"
