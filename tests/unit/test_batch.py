"""python -m batch in-process on the small iris bundle: columns, rejects, reconciliation, order, formats, inputs,
metadata and atomic output, each against plain ONNX Runtime on the same rows."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batch.__main__ import main

ROWS = 1000


@pytest.fixture
def table(trained):
    """ROWS rows of the iris features (some repeated rows of the training range) and a row_id and a note column."""
    _, manifest, _ = trained
    rng = np.random.default_rng(7)
    x = rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], (ROWS, 4))
    columns = {"row_id": pa.array(np.arange(ROWS)), "note": pa.array([f"n{i}" for i in range(ROWS)])}
    columns.update({name: pa.array(x[:, j]) for j, name in enumerate(reversed(manifest.features))})
    return pa.table(columns)  # features in reverse order: matched by name, not position


def reference(trained, table: pa.Table) -> np.ndarray:
    folder, manifest, _ = trained
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.column_stack([table.column(f).to_numpy() for f in manifest.features]).astype(np.float32)
    return session.run(None, {"features": x})[0]


def score(trained, *args: str) -> int:
    return main(["--repository", str(trained[2]), "--name", "iris", "--quiet", *args])


def probabilities(output: pa.Table, classes) -> np.ndarray:
    return np.column_stack([output.column(f"p_{c}").to_numpy() for c in classes])


def test_scores_in_input_order_over_many_chunks_and_threads(trained, table, tmp_path):
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=333)
    assert score(trained, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet"),
                 "--keep", "row_id", "--chunk-rows", "37") == 0  # fmt: skip
    output = pq.read_table(tmp_path / "out.parquet")
    classes = trained[1].classes
    assert output.column_names == ["row_id", "label", *(f"p_{c}" for c in classes)]
    assert output.column("row_id").to_pylist() == list(range(ROWS))
    expected = reference(trained, table)
    assert np.array_equal(probabilities(output, classes), expected)  # bit for bit: the same session code
    assert output.column("label").to_pylist() == [classes[i] for i in expected.argmax(axis=1)]
    assert [pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(i).num_rows for i in range(3)] == [37] * 3


def test_metadata_and_summary_reconcile(trained, table, tmp_path):
    folder, manifest, _ = trained
    pq.write_table(table, tmp_path / "in.parquet")
    assert score(trained, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet")) == 0
    meta = pq.read_schema(tmp_path / "out.parquet").metadata
    from bundle.atomic import sha256_file

    assert meta[b"tabserve.model"] == b"iris" and meta[b"tabserve.version"] == str(manifest.version).encode()
    assert meta[b"tabserve.manifest_sha256"].decode() == sha256_file(folder / "manifest.json")
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"], summary["rows_rejected"]) == (ROWS, ROWS, 0)
    assert summary["engine"] == "local" and summary["manifest_sha256"] == meta[b"tabserve.manifest_sha256"].decode()
    assert pq.read_table(tmp_path / "out.rejects.parquet").num_rows == 0
    assert not list(tmp_path.glob(".*parts"))  # the parts are gone once the output is in place


def test_rejects_name_the_feature_and_the_problem_csv(trained, table, tmp_path):
    features = trained[1].features
    pacsv.write_csv(table, tmp_path / "in.csv")
    lines = (tmp_path / "in.csv").read_text().splitlines()
    header = lines[0].replace('"', "").split(",")
    bad = {3: (features[0], "abc"), 10: (features[1], ""), 500: (features[2], "nan"), 900: (features[3], "-inf")}
    for row, (name, value) in bad.items():
        cells = lines[row + 1].split(",")
        cells[header.index(name)] = value
        lines[row + 1] = ",".join(cells)
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    assert score(trained, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"),
                 "--keep", "row_id,note", "--chunk-rows", "100") == 0  # fmt: skip
    rejects = pacsv.read_csv(tmp_path / "out.rejects.csv")
    assert rejects.column("row_id").to_pylist() == sorted(bad)
    assert rejects.column("reason").to_pylist() == [
        f'feature "{features[0]}" is not a number: "abc"', f'feature "{features[1]}" is missing',
        f'feature "{features[2]}" is NaN', f'feature "{features[3]}" is infinite (-inf)',
    ]  # fmt: skip
    assert rejects.column(features[0]).to_pylist()[0] == "abc"  # the row as read
    output = pacsv.read_csv(tmp_path / "out.csv")
    assert output.num_rows == ROWS - len(bad) and set(output.column("row_id").to_pylist()).isdisjoint(bad)
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"], summary["rows_rejected"]) == (ROWS, ROWS - 4, 4)


def test_rejects_from_parquet_nulls_nan_and_inf(trained, table, tmp_path):
    features = trained[1].features
    values = table.column(features[2]).to_numpy().copy()
    values[[1, 2]] = [np.nan, np.inf]
    table = table.set_column(table.schema.get_field_index(features[2]), features[2],
                             pa.array(values, mask=np.arange(ROWS) == 5))  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet")
    assert score(trained, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.parquet"),
                 "--rejects", str(tmp_path / "bad.parquet"), "--keep", "row_id") == 0  # fmt: skip
    rejects = pq.read_table(tmp_path / "bad.parquet")
    name = json.dumps(features[2])
    assert rejects.column("reason").to_pylist() == [f"feature {name} is NaN", f"feature {name} is infinite (inf)",
                                                    f"feature {name} is missing"]  # fmt: skip
    assert rejects.schema.field(features[2]).type == pa.float64()


def test_folder_and_glob_inputs_read_files_in_order(trained, table, tmp_path):
    (tmp_path / "parts").mkdir()
    for i, start in enumerate(range(0, ROWS, 250)):
        pq.write_table(table.slice(start, 250), tmp_path / "parts" / f"part-{i}.parquet")
    for source in (tmp_path / "parts", tmp_path / "parts" / "part-*.parquet"):
        out = tmp_path / "out.parquet"
        assert score(trained, "--input", str(source), "--output", str(out), "--keep", "row_id") == 0
        output = pq.read_table(out)
        assert output.column("row_id").to_pylist() == list(range(ROWS))
        assert np.array_equal(probabilities(output, trained[1].classes), reference(trained, table))


def test_a_missing_feature_is_refused_before_any_work(trained, table, tmp_path, capsys):
    features = trained[1].features
    pq.write_table(table.drop_columns([features[1], features[3]]), tmp_path / "in.parquet")
    assert score(trained, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet")) == 2
    error = capsys.readouterr().err
    assert "lacks 2 of model 'iris'" in error and repr([features[1], features[3]]) in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]  # nothing written


def test_an_output_appears_whole_or_not_at_all(trained, table, tmp_path, capsys):
    """The second file's feature column cannot be read as the first's type: the run fails midway."""
    features = trained[1].features
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    broken = table.set_column(table.schema.get_field_index(features[0]), features[0],
                              pa.array([[1.0]] * ROWS))  # fmt: skip
    pq.write_table(broken, tmp_path / "in" / "b.parquet")
    out = tmp_path / "out.parquet"
    assert score(trained, "--input", str(tmp_path / "in"), "--output", str(out), "--chunk-rows", "100") == 1
    assert "failed:" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.rejects.parquet").exists()
    assert len(list((tmp_path / ".out.parquet.parts").glob("output-*.arrow"))) >= 1  # what --resume continues from
    assert score(trained, "--input", str(tmp_path / "in"), "--output", str(out)) == 2  # not over an unfinished run
