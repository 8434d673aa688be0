"""Token choice from float32 logits: greedy, temperature and nucleus (top-p), seeded. Pure functions."""
import torch


def make_generator(seed: int | None, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample_token(logits_V: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """temperature 0 -> argmax; otherwise softmax(logits / T), keep the smallest set with mass >= top_p, draw."""
    if temperature <= 0:
        # max(0) picks the first maximum like argmax, and is ~3x faster on CPU for a 131k vocab
        return int(logits_V.max(0).indices)
    probs = torch.softmax(logits_V.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # drop a token once the mass before it already reaches top_p; the top token always stays
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs[drop] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))
