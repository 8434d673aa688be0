"""Token choice from float32 logits: greedy, temperature and nucleus (top-p), seeded. Pure functions."""

import torch


def make_generator(seed: int | None, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def argmax(x_V: torch.Tensor) -> int:
    """The first index of the maximum, like torch.argmax, but split into 1024-wide rows that reduce in parallel:
    faster on a CPU for a 131k vocab (docs/performance.md, "Per-call and load costs"). max(dim) returns the first
    maximum of each row, argmax the first row."""
    if x_V.shape[-1] % 1024 or x_V.shape[-1] < 65536:
        return int(x_V.argmax())
    values, indices = x_V.view(-1, 1024).max(-1)
    row = int(values.argmax())
    return row * 1024 + int(indices[row])


# Temperatures below this sample as greedy: their limit. Smaller ones underflow in float32 arithmetic (1e-300 is 0
# there, and (max - max) / 0 is NaN), and at 1e-5 any logit gap that float32 resolves already gives a one-hot.
GREEDY_BELOW = 1e-5


def sample_token(logits_V: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """temperature 0 -> argmax; otherwise softmax(logits / T), keep the smallest set with mass >= top_p, draw."""
    if temperature < GREEDY_BELOW:
        return argmax(logits_V)
    # shifted by the max first: a tiny temperature then sends the rest to -inf, not the max to +inf (NaN)
    logits_V = logits_V.float()
    probs = torch.softmax((logits_V - logits_V.max()) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # drop a token once the mass before it already reaches top_p; the top token always stays
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop[..., 0] = False  # even when top_p underflows to 0 in float32
        sorted_probs[drop] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def dia_pick(
    cond_CxV: torch.Tensor,
    uncond_CxV: torch.Tensor,
    *,
    cfg_scale: float,
    temperature: float,
    top_p: float,
    top_k: int,
    eos: int,
    sample_from_cond: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """One code per channel (C,) from Dia's conditional and unconditional logits.

    sample_from_cond=True is the 0626 rule (nari 65028e0, transformers): the top-k of the CFG logits picks
    the candidates, the cond logits rank them. False is the v0.1 rule as mistral.rs runs it: CFG logits
    throughout. Both: PAD/BOS never, EOS only in channel 0, and EOS only when it is the best candidate
    (then it is forced). temperature 0 is greedy: transformers' do_sample=False.
    """
    cfg_CxV = torch.add(cond_CxV, cond_CxV - uncond_CxV, alpha=cfg_scale)
    if sample_from_cond:
        top = cfg_CxV.topk(top_k, dim=-1).indices
        logits = torch.full_like(cond_CxV, float("-inf")).scatter_(-1, top, cond_CxV.gather(-1, top))
    else:
        logits = cfg_CxV
    logits[:, eos + 1 :] = float("-inf")  # PAD and BOS are never generated
    logits[1:, eos] = float("-inf")  # only channel 0 may end the utterance
    if bool(logits[0].argmax() == eos):
        logits[0, :eos] = float("-inf")  # EOS as the argmax is forced...
    else:
        logits[0, eos] = float("-inf")  # ...and suppressed otherwise
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # shifted: see sample_token
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # a no-op after the 0626 filter
    logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop[..., 0] = False  # the top token always stays, even when top_p underflows to 0 in float32
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
