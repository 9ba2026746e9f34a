"""ONNX graphs with external data or non-standard operator domains are refused before ONNX Runtime sees them."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundle.errors import BundleError
from bundle.graph_safety import check_graph_safety

OPSETS = [helper.make_opsetid("", 20)]


def model(nodes, initializers=(), opsets=OPSETS, functions=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def weights(name: str = "w") -> TensorProto:
    return numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096)[:, :4].copy(), name)


def refused(path, reason: str) -> str:
    with pytest.raises(BundleError) as error:
        check_graph_safety(path)
    assert error.value.reason == reason, str(error.value)
    return str(error.value)


def test_a_plain_graph_and_the_ml_domain_pass(tmp_path):
    plain = model([helper.make_node("Add", ["x", "w"], ["y"])], [weights()])
    onnx.save(plain, tmp_path / "plain.onnx")
    check_graph_safety(tmp_path / "plain.onnx")
    scaler = model(
        [helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.0] * 4, scale=[1.0] * 4)],
        opsets=[*OPSETS, helper.make_opsetid("ai.onnx.ml", 1)],
    )
    onnx.save(scaler, tmp_path / "scaler.onnx")
    check_graph_safety(tmp_path / "scaler.onnx")


def test_an_initializer_in_an_external_file_is_refused(tmp_path):
    big = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    graph = model([helper.make_node("Add", ["x", "w"], ["y"])], [big])
    onnx.save_model(graph, tmp_path / "model.onnx", save_as_external_data=True, size_threshold=0, location="w.bin")
    assert (tmp_path / "w.bin").exists()
    assert "external file" in refused(tmp_path / "model.onnx", "onnx_external_data")


def test_external_data_inside_a_subgraph_attribute_is_refused(tmp_path):
    hidden = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=hidden)],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = model([node])
    onnx.external_data_helper.set_external_data(graph.graph.node[0].attribute[0].g.node[0].attribute[0].t, "../x")
    (tmp_path / "model.onnx").write_bytes(graph.SerializeToString())  # onnx.save would try to write ../x
    refused(tmp_path / "model.onnx", "onnx_external_data")


def test_a_custom_domain_operator_is_refused(tmp_path):
    custom = model(
        [helper.make_node("Evil", ["x"], ["y"], domain="com.example")],
        opsets=[*OPSETS, helper.make_opsetid("com.example", 1)],
    )
    onnx.checker.check_model(custom)  # the ONNX checker lets it through
    onnx.save(custom, tmp_path / "model.onnx")
    assert "'com.example'" in refused(tmp_path / "model.onnx", "onnx_custom_domain")


def test_a_custom_domain_only_in_opset_import_or_a_function_is_refused(tmp_path):
    imported = model([helper.make_node("Identity", ["x"], ["y"])], opsets=[*OPSETS, helper.make_opsetid("x.y", 1)])
    onnx.save(imported, tmp_path / "imported.onnx")
    assert "opset_import" in refused(tmp_path / "imported.onnx", "onnx_custom_domain")
    function = helper.make_function("", "Twice", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], OPSETS)
    local = model([helper.make_node("Identity", ["x"], ["y"])], functions=[function])
    local.functions[0].node[0].domain = "com.example"
    onnx.save(local, tmp_path / "function.onnx")
    refused(tmp_path / "function.onnx", "onnx_custom_domain")


def test_garbage_and_truncated_files_are_invalid(tmp_path):
    plain = model([helper.make_node("Add", ["x", "w"], ["y"])], [weights()]).SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(plain[: len(plain) // 2])
    refused(tmp_path / "truncated.onnx", "onnx_invalid")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff" * 16)
    refused(tmp_path / "garbage.onnx", "onnx_invalid")
