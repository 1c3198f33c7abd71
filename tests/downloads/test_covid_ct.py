"""The download against a local HTTP server on 127.0.0.1 serving small zips made here."""

from __future__ import annotations

import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from covidct.cli import main
from covidct.data.datasets import load_splits
from covidct.data.downloads.covid_ct import download_dataset, verify_dataset
from covidct.errors import DataError
from tests.conftest import TINY_COUNTS, make_covidct_layout


def build_mirror(root: Path, src: Path) -> Path:
    """A folder laid out like the GitHub repository: zips of each class plus the split files."""
    for cls in ("COVID", "NonCOVID"):
        zdir = root / "Images-processed"
        zdir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zdir / f"CT_{cls}.zip", "w") as zf:
            for img in sorted((src / "Images-processed" / f"CT_{cls}").iterdir()):
                zf.write(img, f"CT_{cls}/{img.name}")
            zf.writestr(f"__MACOSX/CT_{cls}/._junk.png", b"resource fork")
        split_dir = root / "Data-split" / cls
        split_dir.mkdir(parents=True, exist_ok=True)
        for f in (src / "Data-split" / cls).iterdir():
            (split_dir / f.name).write_bytes(f.read_bytes())
    return root


class Server:
    """A threaded HTTP server on 127.0.0.1; `lie_about_length` makes it promise more bytes than it sends."""

    def __init__(self, directory: Path, lie_about_length: bool = False):
        directory_str = str(directory)
        lie = lie_about_length

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=directory_str, **kw)

            def log_message(self, *args):
                pass

            def do_GET(self):
                if lie and self.path.endswith(".zip"):
                    body = (Path(directory_str) / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) * 2))
                    self.end_headers()
                    self.wfile.write(body)  # then close: an interrupted transfer
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    src = make_covidct_layout(tmp_path / "src", TINY_COUNTS)
    return build_mirror(tmp_path / "mirror", src)


def test_download_extracts_official_layout(mirror, tmp_path):
    dest = tmp_path / "data" / "covid-ct"
    with Server(mirror) as server:
        out = download_dataset(dest, base_url=server.url, expected=TINY_COUNTS, progress=False)
    assert out == dest
    data = load_splits(dest)
    assert data.counts() == {s: {"NonCOVID": c["NonCOVID"], "COVID": c["COVID"]} for s, c in TINY_COUNTS.items()}
    assert not list(dest.parent.glob(".covid-ct.*"))  # no staging left over
    assert not (dest / "Images-processed" / "CT_COVID" / "._junk.png").exists()
    # already complete: a second call is a no-op, even with the server gone
    assert download_dataset(dest, base_url="http://127.0.0.1:9/", expected=TINY_COUNTS, progress=False) == dest


def test_official_counts_are_checked(mirror, tmp_path):
    dest = tmp_path / "covid-ct"
    with Server(mirror) as server, pytest.raises(DataError) as e:
        download_dataset(dest, base_url=server.url, progress=False)  # official counts expected
    msg = str(e.value)
    assert "trainCT_COVID.txt lists 8 images, expected 191" in msg
    assert "holds 16 images, expected 349" in msg
    assert not dest.exists()


def test_corrupt_zip_leaves_nothing(mirror, tmp_path):
    z = mirror / "Images-processed" / "CT_NonCOVID.zip"
    raw = bytearray(z.read_bytes())
    raw[60:80] = b"\x00" * 20  # damage the first member's data
    z.write_bytes(bytes(raw))
    dest = tmp_path / "covid-ct"
    with Server(mirror) as server, pytest.raises(DataError, match=r"CT_NonCOVID\.zip is corrupt"):
        download_dataset(dest, base_url=server.url, expected=TINY_COUNTS, progress=False)
    assert not dest.exists() and not list(tmp_path.glob(".covid-ct*"))


def test_truncated_zip_detected(mirror, tmp_path):
    z = mirror / "Images-processed" / "CT_COVID.zip"
    z.write_bytes(z.read_bytes()[:-100])
    with Server(mirror) as server, pytest.raises(DataError, match=r"CT_COVID\.zip is corrupt or incomplete"):
        download_dataset(tmp_path / "d", base_url=server.url, expected=TINY_COUNTS, progress=False)
    assert not (tmp_path / "d").exists()


def test_interrupted_transfer_detected(mirror, tmp_path):
    with (
        Server(mirror, lie_about_length=True) as server,
        pytest.raises(DataError, match=r"interrupted|failed"),
    ):
        download_dataset(tmp_path / "d", base_url=server.url, expected=TINY_COUNTS, progress=False, timeout=10)
    assert not (tmp_path / "d").exists()


def test_missing_file_on_server(mirror, tmp_path):
    (mirror / "Data-split" / "COVID" / "valCT_COVID.txt").unlink()
    with Server(mirror) as server, pytest.raises(DataError, match=r"valCT_COVID\.txt failed: HTTP 404"):
        download_dataset(tmp_path / "d", base_url=server.url, expected=TINY_COUNTS, progress=False)


def test_incomplete_existing_dest_is_not_overwritten(mirror, tmp_path):
    dest = tmp_path / "covid-ct"
    (dest / "Images-processed").mkdir(parents=True)
    keep = dest / "notes.txt"
    keep.write_text("mine")
    with Server(mirror) as server:
        with pytest.raises(DataError, match="--force"):
            download_dataset(dest, base_url=server.url, expected=TINY_COUNTS, progress=False)
        assert keep.read_text() == "mine"
        download_dataset(dest, base_url=server.url, expected=TINY_COUNTS, force=True, progress=False)
    assert not keep.exists() and verify_dataset(dest, TINY_COUNTS) == []


def test_cli_download_reports_problems(mirror, tmp_path, capsys):
    with Server(mirror) as server:
        code = main(["data", "download", "--dest", str(tmp_path / "d"), "--base-url", server.url])
    assert code == 2
    err = capsys.readouterr().err
    assert "covidct: error: downloaded dataset fails its checks" in err and "expected 397" in err
    assert "Traceback" not in err


def test_api_download_raises_the_commands_typed_error(mirror, tmp_path):
    import covidct.api as cct

    with Server(mirror) as server, pytest.raises(cct.DataError, match=r"fails its checks(.|\n)*expected 397"):
        cct.download("covid-ct", tmp_path / "d", base_url=server.url)  # the tiny mirror is not the real dataset
    assert not (tmp_path / "d").exists()  # nothing half-written
    with pytest.raises(cct.CovidCTError, match="covid-ct"):
        cct.download("no-such-source", tmp_path / "e")  # the known sources are named
