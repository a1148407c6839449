"""sources: every kind of source becomes a complete snapshot, or an error that leaves the old one."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tasks.errors import InputError, TransientIOError
from tasks.ingest import ingest
from tasks.params import ColumnRule, Ingest
from tests.tasks.conftest import paths, run_ingest, tiny_contract, tiny_csv

CSV = b"a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"
CSV_ROWS = 4


def snapshot(root) -> pa.Table:
    return pq.read_table(paths(root)["raw"])


def files_of(root) -> dict:
    """The bytes of every file ingest writes, to check that a failure left them alone."""
    return {k: p.read_bytes() for k in ("raw", "manifest", "contract") if (p := paths(root)[k]).exists()}


def good_snapshot(tmp_path):
    """A previous good ingest in tmp_path/out; returns (root, its files)."""
    root = tmp_path / "out"
    run_ingest(tiny_csv(tmp_path / "good.csv"), root)
    assert len(files := files_of(root)) == 3
    return root, files


# --- local sources ----------------------------------------------------------------------------------------------

def test_csv_parquet_and_jsonl_files_give_the_same_table(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_bytes(CSV)
    table = pacsv.read_csv(csv)
    pq.write_table(table, tmp_path / "s.parquet")
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    out = {}
    for name in ("s.csv", "s.parquet", "s.jsonl"):
        m = run_ingest(tmp_path / name, tmp_path / name.replace(".", "_"))
        assert m["rows"] == CSV_ROWS and m["files"] == 1
        assert m["source_sha256"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        out[name] = snapshot(tmp_path / name.replace(".", "_"))
    assert out["s.csv"].to_pylist() == table.to_pylist()
    assert out["s.parquet"].to_pylist() == out["s.jsonl"].to_pylist() == table.to_pylist()


def test_folder_of_csv_files_appending_a_file_appends_rows(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_bytes(CSV)
    first = run_ingest(src, tmp_path / "one")
    assert first["rows"] == CSV_ROWS and first["files"] == 1
    (src / "b.csv").write_text("a,b,label\n9,10,z\n11,12,x\n")
    second = run_ingest(src, tmp_path / "two")
    assert second["rows"] == CSV_ROWS + 2 and second["files"] == 2
    before, after = snapshot(tmp_path / "one").to_pylist(), snapshot(tmp_path / "two").to_pylist()
    assert after[:CSV_ROWS] == before  # the old rows first, unchanged and in order
    assert after[CSV_ROWS:] == [{"a": 9, "b": 10, "label": "z"}, {"a": 11, "b": 12, "label": "x"}]
    assert second["version"] != first["version"] and second["source_sha256"] != first["source_sha256"]


def test_image_folder_gives_pixel_columns_and_the_folder_name_as_label(tmp_path):
    from PIL import Image

    h, w = 3, 2
    expected = []
    for cls, base in (("cat", 10), ("dog", 100)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(3):
            px = (np.arange(h * w, dtype=np.uint8) + base + i).reshape(h, w)
            Image.fromarray(px, mode="L").save(tmp_path / "img" / cls / f"{i}.png")
            expected.append((px.reshape(-1).tolist(), cls))
    m = run_ingest(tmp_path / "img", tmp_path / "out", image_shape=(h, w))
    assert m["rows"] == 6 and m["files"] == 6 and m["image_shape"] == [h, w]
    t = snapshot(tmp_path / "out")
    assert t.column_names == [f"x{j}" for j in range(h * w)] + ["label"]
    got = [([r[f"x{j}"] for j in range(h * w)], r["label"]) for r in t.to_pylist()]
    assert got == expected  # row-major pixels; class = folder


# --- content-addressed versions ---------------------------------------------------------------------------------

def test_same_data_same_version_and_bytes_changed_data_new_version(tmp_path):
    src = tiny_csv(tmp_path / "s.csv")
    a, b = run_ingest(src, tmp_path / "a"), run_ingest(src, tmp_path / "b")
    assert a["version"] == b["version"] and a["sha256"] == b["sha256"]
    assert paths(tmp_path / "a")["raw"].read_bytes() == paths(tmp_path / "b")["raw"].read_bytes()
    assert a["version"] == hashlib.sha256(paths(tmp_path / "a")["raw"].read_bytes()).hexdigest()[:16]
    src.write_text(src.read_text() + "1,2,3,4,0\n")
    c = run_ingest(src, tmp_path / "a")
    assert c["version"] != a["version"] and c["rows"] == a["rows"] + 1


# --- http(s) ----------------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """Answers GET number n (1-based) with server.plan(n) -> (status, body, content_length)."""

    def _answer(self, send_body: bool):
        srv = self.server
        with srv.lock:
            if send_body:
                srv.gets.append(self.path)
            else:
                srv.heads.append(self.path)
            n = len(srv.gets) + (0 if send_body else 1)
        status, body, length = srv.plan(n, self.path)
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass
        self.close_connection = True  # a short body then a closed connection: a cut download

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):  # fsspec's get_file sends none today; counted apart so retries count GETs only
        self._answer(False)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(plan) -> (server, base_url); every server is shut down after the test."""
    started = []

    def start(plan):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.plan, srv.gets, srv.heads, srv.lock = plan, [], [], threading.Lock()
        thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv, f"http://127.0.0.1:{srv.server_port}"

    yield start
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_http_source_is_retried_through_503s_and_snapshotted_once(tmp_path, serve):
    srv, base = serve(lambda n, path: (503, b"busy", None) if n <= 2 else (200, CSV, None))
    logs, p = [], paths(tmp_path)
    m = ingest(Ingest(source=f"{base}/data.csv", retries=3, timeout_s=5), tiny_contract(), p["raw"], p["manifest"],
               p["contract"], log=logs.append)
    assert srv.gets == ["/data.csv"] * 3  # two 503s, then the body
    assert len(logs) == 2 and all("retrying" in line for line in logs)
    assert m["rows"] == CSV_ROWS and m["source_sha256"] == hashlib.sha256(CSV).hexdigest()
    assert snapshot(tmp_path).to_pylist() == pacsv.read_csv(pa.BufferReader(CSV)).to_pylist()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["contract.json", "manifest.json", "raw.parquet"]


@pytest.mark.parametrize("status, message", [(404, r"(?i)404|not found"), (403, "403")])
def test_http_4xx_is_an_input_error_not_retried_and_the_old_snapshot_stays(tmp_path, serve, status, message):
    root, before = good_snapshot(tmp_path)
    srv, base = serve(lambda n, path: (status, b"no", None))
    with pytest.raises(InputError, match=message) as e:
        run_ingest(f"{base}/gone.csv", root, retries=3, timeout_s=5)
    assert "gone.csv" in str(e.value)
    assert len(srv.gets) == 1
    assert files_of(root) == before


def test_http_that_keeps_failing_is_a_transient_error_and_the_old_snapshot_stays(tmp_path, serve):
    root, before = good_snapshot(tmp_path)
    srv, base = serve(lambda n, path: (503, b"busy", None))
    with pytest.raises(TransientIOError, match="after 2 attempts"):
        run_ingest(f"{base}/data.csv", root, retries=1, timeout_s=5)
    assert len(srv.gets) == 2
    assert files_of(root) == before


def test_cut_http_download_is_retried_and_never_becomes_a_partial_snapshot(tmp_path, serve):
    # Content-Length says 34 bytes, 15 arrive, the connection closes: the 15 bytes hold one whole CSV row
    srv, base = serve(lambda n, path: (200, CSV[:15], len(CSV)) if n == 1 else (200, CSV, None))
    m = run_ingest(f"{base}/data.csv", tmp_path, retries=1, timeout_s=5)
    assert len(srv.gets) == 2
    assert m["rows"] == CSV_ROWS and m["source_sha256"] == hashlib.sha256(CSV).hexdigest()
    assert snapshot(tmp_path).num_rows == CSV_ROWS


def test_http_download_that_is_always_cut_is_a_transient_error_and_the_old_snapshot_stays(tmp_path, serve):
    root, before = good_snapshot(tmp_path)
    srv, base = serve(lambda n, path: (200, CSV[:15], len(CSV)))
    with pytest.raises(TransientIOError, match="(?i)payload|content.length"):
        run_ingest(f"{base}/data.csv", root, retries=1, timeout_s=5)
    assert len(srv.gets) == 2
    assert files_of(root) == before


def test_http_timeout_is_retried(tmp_path, serve):
    def plan(n, path):
        if n == 1:
            time.sleep(1.0)  # longer than timeout_s: the first attempt times out
        return 200, CSV, None

    srv, base = serve(plan)
    m = run_ingest(f"{base}/data.csv", tmp_path, retries=1, timeout_s=0.3)
    assert len(srv.gets) == 2 and m["rows"] == CSV_ROWS


# --- s3 (the moto server fixture `s3` is in tests/conftest.py) ---------------------------------------------------

def test_s3_source_through_s3fs(tmp_path, s3):
    client, endpoint = s3
    client.put_object(Bucket="data", Key="in/table.csv", Body=CSV)
    m = run_ingest("s3://data/in/table.csv", tmp_path, storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    assert m["rows"] == CSV_ROWS and m["source_sha256"] == hashlib.sha256(CSV).hexdigest()
    assert snapshot(tmp_path).to_pylist() == pacsv.read_csv(pa.BufferReader(CSV)).to_pylist()


def test_missing_s3_key_is_an_input_error(tmp_path, s3):
    root, before = good_snapshot(tmp_path)
    with pytest.raises(InputError, match=r"s3://data/nope\.csv: not found"):
        run_ingest("s3://data/nope.csv", root, storage_options={"client_kwargs": {"endpoint_url": s3[1]}})
    assert files_of(root) == before


# --- rows named as a person finds them; what an image folder holds besides images -------------------------------

def _examples(root) -> list[str]:
    return json.loads((root / "contract.failed.json").read_text())["violations"][0]["examples"]


@pytest.mark.parametrize("name, write, where", [
    ("s.csv", lambda t, p: pacsv.write_csv(t, p), "line 4"),  # the header is line 1, data row 0 line 2
    ("s.jsonl", lambda t, p: p.write_text("".join(json.dumps(r) + "\n" for r in t.to_pylist())), "line 3"),
    ("s.parquet", lambda t, p: pq.write_table(t, p), "row 3"),
], ids=["csv", "jsonl", "parquet"])
def test_example_rows_are_named_by_line_or_row(tmp_path, name, write, where):
    t = pa.table({"a": [1, 2, 9, 3], "label": [0, 1, 0, 1]})  # the bad value is data row 2 (0-based)
    write(t, tmp_path / name)
    with pytest.raises(InputError, match=rf"e\.g\. {where}: 9$"):
        run_ingest(tmp_path / name, tmp_path, tiny_contract(columns={"a": ColumnRule(max=5)}))
    assert _examples(tmp_path) == [f"{where}: 9"]


def test_a_csv_without_header_counts_from_line_one_and_a_folder_names_the_file(tmp_path):
    (tmp_path / "s.csv").write_text("1,0\n9,1\n")
    with pytest.raises(InputError, match=r"e\.g\. line 2: 9$"):
        run_ingest(tmp_path / "s.csv", tmp_path, tiny_contract(columns={"x0": ColumnRule(max=5)}), header=False)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text("a,label\n1,0\n2,1\n")
    (tmp_path / "src" / "b.csv").write_text("a,label\n3,0\n9,1\n")
    with pytest.raises(InputError, match=r"e\.g\. b\.csv line 3: 9$"):
        run_ingest(tmp_path / "src", tmp_path, tiny_contract(columns={"a": ColumnRule(max=5)}))


def test_an_image_row_is_named_by_its_file(tmp_path):
    from tests.tasks.test_contract import image_folder

    folder = image_folder(tmp_path / "img", {})  # pixel x0: a 0, 10, 20; b 100, 110, 120
    with pytest.raises(InputError, match=r"e\.g\. b/1\.png: 110; b/2\.png: 120"):
        run_ingest(folder, tmp_path, tiny_contract(columns={"x0": ColumnRule(max=105)}), image_shape=(4, 4))


def test_a_csv_row_of_the_wrong_width_is_named_by_its_line(tmp_path):
    (tmp_path / "s.csv").write_text('a,b,label\n1,"two\nlines",0\n\n3,4\n5,6,1\n')
    with pytest.raises(InputError, match=r"s\.csv: line 5 has 2 value\(s\), line 1 has 3"):
        run_ingest(tmp_path / "s.csv", tmp_path)


@pytest.mark.parametrize("lines, words", [
    (['{"a": 1, "label": 0}', "", '{"a": 2, "label": 1}', '{"a": "x", "label": 0}'],
     r"column 'a': mixed types: a number on line 1, a string on line 4"),
    (['{"a": 1, "label": 0}', '{"a": 2 "label": 1}'], r"line 2 is not valid JSON \(Expecting ','"),
    (['{"a": 1, "label": 0}', '', '{"a": 1e400, "label": 1}'], r"line 3 is not valid JSON \(the number 1e400 is "
                                                               r"too big for a double"),
    (['{"a": 1, "label": 0}', "[1, 0]"], r"line 2 holds a JSON list, not an object"),
], ids=["type-change", "syntax", "too-big", "not-an-object"])
def test_a_bad_json_line_is_named_by_its_line(tmp_path, lines, words):
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"s\.jsonl: {words}"):
        run_ingest(tmp_path / "s.jsonl", tmp_path)


def test_what_an_image_folder_holds_besides_images_is_skipped_by_name(tmp_path, capsys):
    from tests.tasks.test_contract import image_folder

    folder = image_folder(tmp_path / "img", {"a/notes.txt": b"taken on a Tuesday", "stray.png": ("L", (4, 4)),
                                             ".DS_Store": b"", "README.md": b"the digits, as PNG"})
    (folder / "empty").mkdir()
    (folder / "b" / "deeper").mkdir()
    deeper = folder / "b" / "deeper" / "x.png"
    deeper.write_bytes((folder / "a" / "0.png").read_bytes())
    m = run_ingest(folder, tmp_path / "out", image_shape=(4, 4))
    assert m["rows"] == 6
    expected = [f"{folder / 'a' / 'notes.txt'}: not an image file", f"{folder / 'b' / 'deeper'}: a folder inside "
                f"class folder 'b', not read", f"{folder / 'empty'}: an empty class folder (no image files), so no "
                f"class 'empty'", f"{folder / 'stray.png'}: a file beside the class folders, in none of them"]
    skipped = json.loads((tmp_path / "out" / "contract.json").read_text())["skipped"]
    assert [s[:len(e)] for s, e in zip(skipped, expected)] == expected and len(skipped) == 4
    err = capsys.readouterr().err.splitlines()
    assert [line[:len("ingest: warning: skipped ") + len(e)] for line, e in zip(err, expected)] == [
        f"ingest: warning: skipped {e}" for e in expected]
