"""Loops: uint8 batches, the loss falls on a learnable problem, evaluate and predict agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.config import AugmentConfig
from cxr.data.augment import BatchAugment, Normalize, eval_resize
from cxr.models import build_model
from cxr.training.engine import evaluate_loader, predict_probabilities, train_one_epoch
from cxr.training.loaders import ArrayDataset, DeviceBatches, make_loader, stage_on_device
from toydata import toy

MEAN, STD = [0.5] * 3, [0.5] * 3


def test_dataset_returns_uint8_batches_in_index_order():
    x, y = toy(8, 0, balanced=True)
    xb, yb = ArrayDataset(x, y).__getitems__([5, 1, 3])
    assert xb.dtype == torch.uint8 and xb.shape == (3, 1, 20, 20)
    assert torch.equal(xb[0, 0], torch.from_numpy(x[5])) and yb.tolist() == [1.0, 1.0, 1.0]


def test_loader_shuffle_is_seeded():
    x, y = toy(16, 0, balanced=True)
    order = lambda seed: torch.cat([b[1] for b in make_loader(x, np.arange(16), batch_size=4, shuffle=True, seed=seed)])
    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))


def test_loader_order_does_not_depend_on_how_often_it_is_iterated(on_a_terminal):
    # A progress bar (tqdm.auto calls iter() on construction) or any extra iter() must not shift
    # the shuffle, nor draw from the global RNG (dropout); CPU and CUDA loaders share one order.
    from cxr.training.engine import _progress

    x, _ = toy(16, 0, balanced=True)
    labels = np.arange(16)

    def order(loader):
        return torch.cat([yb for _, yb in loader])

    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader = make_loader(x, labels, batch_size=4, shuffle=True, seed=7)
    first = order(loader)
    iter(loader)  # an iterator made and dropped
    assert torch.equal(order(loader), first)
    bar = _progress(loader, True, "t")
    assert bar is not loader and torch.equal(order(bar), first)
    assert torch.equal(torch.get_rng_state(), before)
    order(make_loader(x, labels, batch_size=4, shuffle=False))
    assert torch.equal(torch.get_rng_state(), before)
    gpu_path = DeviceBatches(x, labels, batch_size=4, shuffle=True, seed=7, device=torch.device("cpu"))
    assert torch.equal(order(gpu_path), first)


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_device_batches(tmp_path, resident, drop_last):
    # DeviceBatches is what make_loader gives on CUDA; on the CPU it runs the same code without pinning.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 6, 6)).astype(np.uint8)
    labels = np.arange(24)
    if resident:
        images = torch.from_numpy(x)
    else:  # a read-only memmap, as the cache is
        np.save(tmp_path / "x.npy", x)
        images = np.load(tmp_path / "x.npy", mmap_mode="r")

    def batches(shuffle, seed=3):
        loader = DeviceBatches(
            images, labels, batch_size=5, shuffle=shuffle, seed=seed, device=torch.device("cpu"), drop_last=drop_last
        )
        out = list(loader)  # all kept: a reused host buffer must not change earlier batches
        assert len(out) == len(loader) == (4 if drop_last else 5)
        return out

    got = batches(True)
    seen = torch.cat([yb for _, yb in got]).long()
    assert len(seen) == (20 if drop_last else 24) and len(set(seen.tolist())) == len(seen)
    assert not torch.equal(seen, torch.sort(seen).values)  # shuffled
    for xb, yb in got:  # each image travels with its own label
        assert xb.dtype == torch.uint8 and xb.shape[1:] == (1, 6, 6)
        assert torch.equal(xb[:, 0], torch.from_numpy(x[yb.long().numpy()]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, batches(True)))  # seeded
    assert not torch.equal(got[0][1], batches(True, seed=4)[0][1])
    plain = batches(False)  # no shuffle: the DataLoader's batches exactly
    ref = list(make_loader(x, labels, batch_size=5, shuffle=False, drop_last=drop_last))
    assert len(plain) == len(ref)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, ref))


def test_device_batches_refuse_non_uint8_images():
    with pytest.raises(ValueError, match="uint8.*float32"):
        DeviceBatches(np.zeros((4, 6, 6), np.float32), None, batch_size=2, shuffle=False, device=torch.device("cpu"))


def test_stage_on_device_leaves_cpu_data_alone():
    x, _ = toy(4, 0, balanced=True)
    assert stage_on_device(x, torch.device("cpu")) is x


def test_loss_falls_and_evaluate_agrees_with_predict():
    torch.manual_seed(0)
    x, y = toy(32, 0, balanced=True)
    device = torch.device("cpu")
    model = build_model("cnn")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    aug = BatchAugment(AugmentConfig().replace(enabled=False), 16)
    norm = Normalize(MEAN, STD)
    resize = lambda b: eval_resize(b, 16)
    loader = make_loader(x, y, batch_size=8, shuffle=True, seed=0)
    eval_loader = make_loader(x, y, batch_size=8, shuffle=False)
    before = evaluate_loader(model, loss_fn, eval_loader, device, norm, resize=resize)["loss"]
    for _ in range(6):
        stats = train_one_epoch(model, loss_fn, opt, loader, device, augment=aug, prep=norm)
    after = evaluate_loader(model, loss_fn, eval_loader, device, norm, resize=resize)
    assert set(stats) == {"loss", "acc", "images_per_s", "seconds", "images"} and stats["images_per_s"] > 0
    assert stats["images"] == 32  # what distributed.reduce_train_stats weighs each rank by
    assert after["loss"] < 0.5 * before
    assert after["auc"] > 0.95
    probs = predict_probabilities(model, x, mean=MEAN, std=STD, image_size=16, batch_size=5)
    assert probs.shape == (32,)
    np.testing.assert_allclose(probs, after["probs"], atol=1e-6)
    np.testing.assert_array_equal(after["labels"], y)


def test_a_batch_sampler_chooses_the_rows_of_every_batch_on_both_loader_paths():
    """What DDP gives each rank (distributed.ShardedBatchSampler): the DataLoader path and the
    DeviceBatches path (CUDA's, built here on CPU) yield exactly the sampler's rows."""
    from cxr.training.distributed import ShardedBatchSampler
    from cxr.training.loaders import DeviceBatches

    x, _ = toy(20, 0, balanced=True)
    rows = np.arange(20)  # labels = row numbers
    sampler = ShardedBatchSampler(20, 8, seed=3, rank=1, world=2)  # slices of 4, 4 and 2 rows
    loaders = [
        make_loader(x, rows, batch_size=4, shuffle=True, batch_sampler=sampler),
        DeviceBatches(x, rows, batch_size=4, shuffle=True, device=torch.device("cpu"), batch_sampler=sampler),
    ]
    for loader in loaders:
        got = [(xb, yb.long().tolist()) for xb, yb in loader]
        assert len(loader) == len(sampler) == 3 and [g[1] for g in got] == list(sampler)
        for xb, idx in got:
            assert torch.equal(xb[:, 0], torch.from_numpy(x[idx]))
