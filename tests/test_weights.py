import torch
from safetensors.torch import save_file
from torch import nn

from speechrs.weights import read_safetensors, release_unused


def test_release_unused_drops_only_pages_no_tensor_uses(tmp_path):
    """Tensors the model still holds keep their bytes, even when they share a page with a released one."""
    g = torch.Generator().manual_seed(0)
    data = {
        "a.weight": torch.randn(300, 257, generator=g),
        "b.weight": torch.randn(7, generator=g),
        "c.weight": torch.randn(1000, 33, generator=g),
    }
    save_file(data, str(tmp_path / "x.safetensors"))
    mappings = []
    tensors = dict(read_safetensors(tmp_path / "x.safetensors", mappings))
    module = nn.Module()
    module.a = nn.Parameter(tensors["a.weight"], requires_grad=False)  # still the mapped bytes
    module.b = nn.Parameter(tensors["b.weight"], requires_grad=False)
    module.c = nn.Parameter(tensors["c.weight"] * 2, requires_grad=False)  # replaced: its pages may go
    del tensors
    release_unused(mappings, module)
    assert torch.equal(module.a, data["a.weight"]) and torch.equal(module.b, data["b.weight"])
    assert torch.equal(module.c, data["c.weight"] * 2)
