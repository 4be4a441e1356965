"""Datasets in their published formats; download with md5 checks against a server on 127.0.0.1."""
import functools
import gzip
import http.server
import shutil
import threading

import numpy as np
import pytest
import torch

from dfa_async import data
from dfa_async.config import DataConfig
from dfa_async.data import DataError


@pytest.fixture
def serve():
    servers = []

    def start(folder):
        handler = functools.partial(QuietHandler, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_mnist_from_idx_files(shared_data):
    ds = data.load(DataConfig(name="mnist", dir=str(shared_data), download=False))
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.dtype == torch.int64 and set(ds.y_test.unique().tolist()) == set(range(10))
    assert abs(ds.x_train.mean().item()) < 0.01 and abs(ds.x_train.std().item() - 1) < 0.01


def test_fashion_mnist_from_idx_files(shared_data):
    ds = data.load(DataConfig(name="fashion_mnist", dir=str(shared_data), download=False, normalize=False))
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_download_with_md5_from_a_local_server(shared_data, tmp_path, serve):
    url = serve(shared_data)
    cfg = DataConfig(name="mnist", dir=str(tmp_path), url=url, limit_train=10)
    ds = data.load(cfg)
    assert ds.x_train.shape == (10, 1, 28, 28)
    for name, md5 in zip(data.IDX_FILES, data.MD5["mnist"]):
        assert data.md5(tmp_path / "mnist" / name) == md5
    assert not list((tmp_path / "mnist").glob(".*"))  # no temporary files left


def test_download_of_a_wrong_file_is_refused(tmp_path, serve):
    site = tmp_path / "site" / "mnist"
    site.mkdir(parents=True)
    for name in data.IDX_FILES:
        (site / name).write_bytes(b"not the file")
    url = serve(tmp_path / "site")
    with pytest.raises(DataError, match="md5") as err:
        data.load(DataConfig(name="mnist", dir=str(tmp_path / "dest"), url=url))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "dest" / "mnist" / data.IDX_FILES[0]).exists()


def test_unreachable_server_gives_a_clear_error(tmp_path, serve):
    url = serve(tmp_path)  # serves an empty folder: 404
    with pytest.raises(DataError, match="could not download"):
        data.load(DataConfig(name="fashion_mnist", dir=str(tmp_path / "d"), url=url))


def test_missing_file_without_download(tmp_path):
    with pytest.raises(DataError, match="missing") as err:
        data.load(DataConfig(name="mnist", dir=str(tmp_path), download=False))
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_corrupt_file_is_named(shared_data, tmp_path):
    shutil.copytree(shared_data / "mnist", tmp_path / "mnist")
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.chmod(0o644)
    raw = bytearray(target.read_bytes())
    raw[100] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt") as err:
        data.load(DataConfig(name="mnist", dir=str(tmp_path), download=False))
    assert str(target) in str(err.value)


def test_idx_reader_rejects_short_files(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"\x01" * 10)
    with pytest.raises(DataError, match="holds 10 bytes"):
        data.read_idx(p)


def test_a_dataset_file_that_cannot_be_read_is_one_line_saying_so(tmp_path, monkeypatch):
    from conftest import as_nobody

    (tmp_path / "mnist").mkdir()
    target = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    target.write_bytes(b"whatever")
    target.chmod(0)
    for folder in (tmp_path, tmp_path / "mnist"):
        folder.chmod(0o755)  # open to all (pytest makes them 700): only the file refuses
    monkeypatch.chdir(tmp_path)
    said = as_nobody(lambda: data.load(DataConfig(name="mnist", dir=".", download=False)))
    assert said == ("DataError: data: cannot read mnist/train-images-idx3-ubyte.gz (Permission denied); make it "
                    "readable, or set data.dir to a folder whose files you can read"), said


def write_cifar(folder, n=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = {}
    for name in data.CIFAR_FILES:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pix = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pix], 1).tobytes())
        out[name] = (labels, pix)
    return out


def test_cifar10_binary_version(tmp_path):
    written = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-bin")
    ds = data.load(DataConfig(name="cifar10", dir=str(tmp_path), download=False, normalize=False))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    labels, pix = written["data_batch_2.bin"]
    assert torch.equal(ds.y_train[4:8], torch.from_numpy(labels).long())
    # Record layout: 1024 red, then green, then blue bytes, each plane row-major.
    assert ds.x_train[4, 1, 0, 5].item() == pytest.approx(pix[0, 1024 + 5] / 255)


def test_cifar10_corrupt_batch(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    write_cifar(folder)
    with open(folder / "test_batch.bin", "ab") as fh:
        fh.write(b"\x00\x01")
    with pytest.raises(DataError, match="test_batch.bin is corrupt"):
        data.load(DataConfig(name="cifar10", dir=str(tmp_path), download=False))


def test_synthetic_is_deterministic_and_learnable_shape():
    cfg = DataConfig(name="synthetic", n_train=64, n_test=16, shape=[2, 4, 4], classes=3)
    a, b = data.load(cfg, seed=1), data.load(cfg, seed=1)
    assert torch.equal(a.x_train, b.x_train) and a.shape == (2, 4, 4) and a.classes == 3
    assert not torch.equal(a.x_train, data.load(cfg, seed=2).x_train)


def test_epoch_order_is_a_permutation_per_epoch():
    a, b = data.epoch_order(100, 0, 0), data.epoch_order(100, 0, 1)
    assert sorted(a) == list(range(100)) and not np.array_equal(a, b)
    assert np.array_equal(a, data.epoch_order(100, 0, 0))


def test_flip_augmentation_mirrors_some_rows_by_seed_and_step_alone():
    x = torch.arange(40 * 2 * 3 * 5, dtype=torch.float32).view(40, 2, 3, 5)
    plain, flip = data.Batches(40, 16, seed=3), data.Batches(40, 16, seed=3, augment="flip")
    assert torch.equal(plain.inputs(x, 4), x[plain.indices(4)])
    mirrored = []
    for t in range(6):
        rows, got = x[flip.indices(t)], flip.inputs(x, t)
        same = (got == rows).flatten(1).all(1)
        mirror = (got == rows.flip(-1)).flatten(1).all(1)
        assert bool((same ^ mirror).all())  # each row whole, either as it is or mirrored left to right
        mirrored.append(mirror)
        # a fresh object (another stage, a resumed run) draws the same mirrors, in any step order
        assert torch.equal(data.Batches(40, 16, seed=3, augment="flip").inputs(x, t), got)
        # a data-parallel worker's share: the same rows, mirrored the same way
        assert torch.equal(torch.cat([flip.inputs(x, t, k, 3) for k in range(3)]), got)
    share = torch.cat(mirrored).float().mean().item()
    assert 0.3 < share < 0.7
    other = data.Batches(40, 16, seed=4, augment="flip")
    assert not torch.equal(torch.stack(mirrored),
                           torch.stack([(other.inputs(x, t) == x[other.indices(t)].flip(-1)).flatten(1).all(1)
                                        for t in range(6)]))


def test_labels_are_the_inputs_rows_and_gathering_stays_on_the_datas_device():
    x, y = torch.arange(40 * 3, dtype=torch.float32).view(40, 3), torch.arange(40) * 7
    flip = data.Batches(40, 16, seed=3, augment="flip")
    for t in range(4):
        assert torch.equal(flip.labels(y, t), y[flip.indices(t)])
        assert torch.equal(torch.cat([flip.labels(y, t, k, 3) for k in range(3)]), flip.labels(y, t))
        assert torch.equal(flip.labels(-y, t), -y[flip.indices(t)])  # another tensor: its own labels
    # data.on_device: training tensors held on another device are gathered there, indices and mirrors
    # moved to them (CUDA in use; the meta device here, which has no data but checks devices and shapes)
    xm, ym = data.resident(x, "meta", True), data.resident(y, "meta", True)
    assert xm.is_meta and data.resident(x, "meta", False) is x and data.resident(None, "meta", True) is None
    got, labels = flip.inputs(xm, 5, 1, 3), flip.labels(ym, 5, 1, 3)
    assert got.is_meta and labels.is_meta and got.shape == (5, 3) and labels.shape == (5,)


# -- texts: token streams ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shakespeare(shared_data):
    """A folder holding tinyshakespeare/input.txt (downloaded into it, sha256-checked, where missing)."""
    data.load(DataConfig(name="tinyshakespeare", dir=str(shared_data)), window=8)
    return shared_data


def test_tiny_shakespeare_splits_as_nanogpt_does(shakespeare):
    ds = data.load(DataConfig(name="tinyshakespeare", dir=str(shakespeare), download=False, eval_windows=50), window=64)
    text = (shakespeare / "tinyshakespeare" / "input.txt").read_text()
    assert len(text) == 1_115_394 and ds.classes == 65 and ds.vocab == "".join(sorted(set(text)))
    assert len(ds.x_train) == int(len(text) * 0.9) == 1_003_854  # nanoGPT's train.bin holds as many
    assert "".join(ds.vocab[i] for i in ds.x_train[:40].tolist()) == text[:40]
    assert ds.x_test.shape == ds.y_test.shape == (50, 64) and ds.shape == (64,)
    assert torch.equal(ds.x_test[:, 1:], ds.y_test[:, :-1])  # labels: the next character
    assert ds.samples == (len(ds.x_train) - 1) // 64
    val = text[1_003_854:]
    first = "".join(ds.vocab[i] for i in ds.x_test[0].tolist())
    assert first in val  # a window of the last 10 %
    again = data.load(DataConfig(name="tinyshakespeare", dir=str(shakespeare), download=False, eval_windows=50),
                      seed=7, window=64)
    assert torch.equal(again.x_test, ds.x_test)  # the same validation windows for every run


def test_tiny_shakespeare_download_is_checked_against_its_sha256(shakespeare, tmp_path, serve):
    url = serve(shakespeare)
    ds = data.load(DataConfig(name="tinyshakespeare", dir=str(tmp_path), url=url), window=8)
    assert data.md5(tmp_path / "tinyshakespeare" / "input.txt", "sha256") == data.SHAKESPEARE_SHA256
    assert ds.classes == 65
    site = tmp_path / "site" / "tinyshakespeare"
    site.mkdir(parents=True)
    (site / "input.txt").write_text("not Shakespeare")
    with pytest.raises(DataError, match="sha256 .* expected 86c4e6aa"):
        data.load(DataConfig(name="tinyshakespeare", dir=str(tmp_path / "dest"), url=serve(tmp_path / "site")),
                  window=8)


def test_windows_are_seeded_by_step_alone_and_labels_are_one_token_on():
    stream = torch.arange(1000)
    a, b = data.TextBatches(1000, 6, seed=3, window=10), data.TextBatches(1000, 6, seed=3, window=10)
    x = a.inputs(stream, 17)
    assert x.shape == (6, 10) and torch.equal(x, b.inputs(stream, 17))  # any holder draws the same
    assert torch.equal(b.labels(stream, 17), x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(6, 9, dtype=torch.long))  # contiguous windows
    assert not torch.equal(x, a.inputs(stream, 18))
    assert torch.equal(torch.cat([a.inputs(stream, 5, p, 3) for p in range(3)]), a.inputs(stream, 5))
    many = torch.cat([a.labels(stream, t) for t in range(300)])
    assert 990 <= many.max().item() <= 999 and many.min().item() >= 1  # offsets in [0, n - window), the last labelled
    assert a.steps_per_epoch == 999 // 10 // 6


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe not utf-8", "is not UTF-8 text"),
    (b"short", r"must hold a window of model.block_size \+ 1 = 9"),
])
def test_a_text_that_cannot_be_trained_on_is_one_line(tmp_path, content, words):
    (tmp_path / "t.txt").write_bytes(content)
    with pytest.raises(DataError, match=words) as err:
        data.load(DataConfig(name="text", path=str(tmp_path / "t.txt")), window=8)
    assert "\n" not in str(err.value)


def test_any_utf8_text_is_a_stream_of_its_characters(tmp_path):
    text = "héllo wörld, " * 200
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    ds = data.load(DataConfig(name="text", path=str(tmp_path / "t.txt"), eval_windows=5), window=8)
    assert ds.vocab == "".join(sorted(set(text))) and ds.classes == len(set(text))
    assert len(ds.x_train) == int(len(text) * 0.9)
