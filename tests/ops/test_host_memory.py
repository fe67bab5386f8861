"""The host cache behind the CPU kernels' large outputs: reuse, bounds, and tensors that behave as any other."""

from __future__ import annotations

import io

import pytest
import torch

from medens.ops import (
    _host_memory,
    apply_patch_mask,
    available_backends,
    empty_host_cache,
    entropy_guided_mask,
    gather_patches,
    host_cache_info,
    reference,
)

from .helpers import run_python

pytestmark = pytest.mark.skipif(not available_backends()["cpp"], reason="medens._C (the cpp backend) is not built")

LARGE = (8, 3, 128, 128)  # 1.5 MiB of float32: above the cache threshold


def _large_images(seed: int = 0) -> torch.Tensor:
    return torch.rand(LARGE, generator=torch.Generator().manual_seed(seed))


def test_large_outputs_reuse_a_returned_block():
    images = _large_images()
    mask = entropy_guided_mask(torch.rand(8, 64), 0.75).mask
    first = apply_patch_mask(images, mask, 16, backend="cpp")
    address = first.data_ptr()
    del first
    before = host_cache_info()
    assert before["idle_bytes"] >= images.numel() * 4
    second = apply_patch_mask(images, mask, 16, backend="cpp")
    after = host_cache_info()
    assert second.data_ptr() == address
    assert after["hits"] == before["hits"] + 1
    torch.testing.assert_close(second, reference.apply_patch_mask(images, mask, 16), rtol=0, atol=0)


def test_a_block_is_not_reused_while_a_tensor_holds_it():
    images = _large_images()
    mask = entropy_guided_mask(torch.rand(8, 64), 0.5).mask
    first = apply_patch_mask(images, mask, 16, backend="cpp")
    view = first[:, :1]  # a view keeps the block alive after the tensor itself is gone
    expected = view.clone()
    del first
    second = apply_patch_mask(_large_images(seed=1), mask, 16, fill=-1.0, backend="cpp")
    assert second.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()
    torch.testing.assert_close(view, expected, rtol=0, atol=0)


def test_small_outputs_come_from_torch():
    before = host_cache_info()
    images = torch.rand(2, 3, 32, 32)
    out = apply_patch_mask(images, torch.zeros(2, 4, dtype=torch.bool), 16, backend="cpp")
    assert host_cache_info()["misses"] == before["misses"]
    assert host_cache_info()["hits"] == before["hits"]
    out.resize_(4, 3, 32, 32)  # an ordinary, resizable tensor


def test_empty_host_cache_frees_idle_blocks():
    out = _host_memory.empty(LARGE, torch.float32)
    nbytes = out.numel() * out.element_size()
    del out
    assert host_cache_info()["idle_bytes"] >= nbytes
    freed = empty_host_cache()
    assert freed >= nbytes
    info = host_cache_info()
    assert info["idle_bytes"] == 0 and info["idle_blocks"] == 0


def test_cached_tensors_are_ordinary_tensors():
    shape = (8, 3, 256, 256)  # 3 MiB of bfloat16
    out = _host_memory.empty(shape, torch.bfloat16)
    assert host_cache_info()["in_use_bytes"] >= out.numel() * 2
    assert out.shape == shape and out.dtype == torch.bfloat16 and out.is_contiguous()
    assert out._base is None, "must not be a view (custom ops may not return views)"
    out.fill_(2.0)
    buffer = io.BytesIO()
    torch.save(out, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer), out)
    out.share_memory_()  # what a DataLoader worker does to send a tensor
    assert out.is_shared() and bool((out == 2.0).all())


def test_cached_storage_cannot_grow():
    out = _host_memory.empty((8, 3, 256, 256), torch.float32)
    with pytest.raises(RuntimeError, match="not resizable"):
        out.resize_(2 * out.numel())  # (a failed resize_ leaves the tensor unusable, as in torch itself)


@pytest.mark.parametrize("normalize", [False, True])
def test_gather_backward_writes_every_element_of_a_reused_block(normalize):
    images = _large_images().requires_grad_()
    ids = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(b))[:20] for b in range(8)])
    ids[:, 1] = ids[:, 0]  # a repeated id accumulates
    grad = torch.randn(8, 20, 16 * 16 * 3)
    dirty = _host_memory.empty(LARGE, torch.float32)
    dirty.fill_(float("nan"))  # the block the backward is about to receive holds garbage
    del dirty
    (out,) = torch.autograd.grad(gather_patches(images, ids, 16, normalize=normalize, backend="cpp"), images, grad)
    (expected,) = torch.autograd.grad(reference.gather_patches(images, ids, 16, normalize=normalize), images, grad)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


LIMIT_CASES = {
    # MEDENS_HOST_CACHE_MB=0: outputs are ordinary (resizable) tensors and the cache is never asked.
    "0": "out = _host_memory.empty((8, 3, 128, 128), torch.float32)\n"
         "out.resize_(2 * out.numel())\n"
         "assert info()['limit_bytes'] == 0 and info()['misses'] == 0, info()\n",
    # MEDENS_HOST_CACHE_MB=8: of three idle 3 MiB blocks, the third is freed at once.
    "8": "blocks = [_host_memory.empty((3 << 20,), torch.uint8) for _ in range(3)]\n"
         "del blocks\n"
         "assert info()['idle_bytes'] <= 8 << 20 and info()['idle_blocks'] == 2, info()\n"
         "assert info()['in_use_bytes'] == 0, info()\n",
}


@pytest.mark.parametrize("megabytes", sorted(LIMIT_CASES))
def test_the_limit_comes_from_the_environment(tmp_path, megabytes):
    code = "import torch\nfrom medens.ops import _host_memory, host_cache_info as info\n" + LIMIT_CASES[megabytes]
    result = run_python(code, tmp_path, MEDENS_HOST_CACHE_MB=megabytes)
    assert result.returncode == 0, result.stderr


def test_a_bad_limit_names_the_variable(tmp_path):
    code = "import torch\nfrom medens.ops import _host_memory\n_host_memory.empty((8, 3, 128, 128), torch.float32)\n"
    result = run_python(code, tmp_path, MEDENS_HOST_CACHE_MB="lots")
    assert result.returncode != 0
    assert "MEDENS_HOST_CACHE_MB" in result.stderr and "'lots'" in result.stderr


class _MaskedImages(torch.utils.data.Dataset):
    """Masks images in the worker, as a data pipeline that hides patches before batching would."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(index))  # 3 MiB: cached
        mask = torch.arange(1024).reshape(1, 1024) % 2 == index % 2
        return apply_patch_mask(images, mask, 16, backend="cpp")[0], images[0]


def test_outputs_made_in_dataloader_workers_reach_the_parent():
    # The parent has used the cache before the workers fork; each worker masks its samples with the cache and
    # sends them back through shared memory.
    warm = _host_memory.empty((4, 3, 256, 256), torch.float32)
    del warm
    loader = torch.utils.data.DataLoader(_MaskedImages(), batch_size=None, num_workers=2)
    for index, (masked, images) in enumerate(loader):
        mask = torch.arange(1024).reshape(1, 1024) % 2 == index % 2
        expected = reference.apply_patch_mask(images[None], mask, 16)[0]
        torch.testing.assert_close(masked, expected, rtol=0, atol=0)


def _cached_size_samples():
    """Op calls whose outputs are large enough (>= 1 MiB) to come from the host cache."""
    images = torch.rand(2, 3, 256, 256)  # 1.5 MiB
    leaf = images.detach().clone().requires_grad_()
    ids = torch.stack([torch.randperm(256)[:200] for _ in range(2)])  # (2, 200, 768) float32 out: 1.2 MiB
    mask = torch.rand(2, 256) < 0.5
    ops = torch.ops.medens
    return [
        (ops.gather_patches.default, (leaf, ids, 16, False, 1e-6, "cpp")),
        (ops.gather_patches.default, (leaf, ids, 16, True, 1e-6, "cpp")),
        (ops.gather_patches_backward.default, (torch.rand(2, 200, 768), images, ids, 16, True, 1e-6, "cpp")),
        (ops.apply_patch_mask.default, (leaf, mask, 16, 0.0, "cpp")),
    ]


@pytest.mark.parametrize("case", range(4))
def test_opcheck_with_cached_outputs(case):
    op, args = _cached_size_samples()[case]
    hits = host_cache_info()["hits"] + host_cache_info()["misses"]
    torch.library.opcheck(op, args)
    assert host_cache_info()["hits"] + host_cache_info()["misses"] > hits, "the outputs did not use the cache"


@pytest.mark.slow
def test_torch_compile_with_cached_outputs():
    def step(images, scores, noise):
        m = entropy_guided_mask(scores, 0.25, noise=noise, backend="cpp")
        target = gather_patches(images, m.ids_mask, 16, normalize=True, backend="cpp")
        visible = apply_patch_mask(images, m.mask, 16, backend="cpp")
        return target.square().mean() + visible.mean()

    images = torch.rand(2, 3, 256, 256, requires_grad=True)
    scores, noise = torch.rand(2, 256), torch.rand(2, 256)
    loss = torch.compile(step, fullgraph=True, backend="aot_eager")(images, scores, noise)
    expected = step(images, scores, noise)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, images)
    (expected_grad,) = torch.autograd.grad(expected, images)
    torch.testing.assert_close(grad, expected_grad)
