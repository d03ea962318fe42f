"""The exported graphs use only what TensorRT's ONNX parser supports — checked on the CPU, since no
TensorRT has run here (docs/export.md).

Both graphs (prefix, fused denoise) of both generations are exported from tiny checkpoints, shapes
inferred, and every node checked against TensorRT's published operator support matrix, kept as data
in tests/data/tensorrt_onnx_operators.json (onnx-tensorrt ``docs/operators.md``, the source is named
in the file): the operator must be supported, the data types of its inputs must be among those listed
for it, no tensor may be DOUBLE, and the listed restrictions that a graph can break are checked
(``axes``/``axis`` inputs that must be initializers, ScatterND without ``reduction``,
LayerNormalization's single output).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from wall_runtime.backends.onnxruntime_backend import OnnxRuntimePolicy
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

TABLE = json.loads((Path(__file__).parent / "data" / "tensorrt_onnx_operators.json").read_text())
OPERATORS: dict[str, dict] = TABLE["operators"]

TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8",
    TensorProto.DOUBLE: "DOUBLE",
}
# inputs that TensorRT wants as initializers (constants), by operator: input index
CONSTANT_INPUTS = {
    "Slice": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "CumSum": (1,),
    **{f"Reduce{k}": (1,) for k in ("Mean", "Sum", "Max", "Min", "Prod", "L1", "L2", "SumSquare")},
}


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def tensorrt_violations(path: Path) -> list[str]:
    """Every way the graph at ``path`` breaks TensorRT's published support matrix."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    types = _dtypes(model)
    constants = {t.name for t in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"
    }
    problems = []
    for node in model.graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        spec = OPERATORS.get(node.op_type)
        if spec is None or not spec["supported"]:
            problems.append(f"{where}: operator not supported by TensorRT's ONNX parser")
            continue
        for i, name in enumerate(node.input):
            if not name:
                continue
            if name not in types:
                problems.append(f"{where}: input {i} ({name}) has no inferred type")
                continue
            dtype = TYPE_NAMES.get(types[name], TensorProto.DataType.Name(types[name]))
            if dtype == "DOUBLE":
                problems.append(f"{where}: input {i} is DOUBLE")
            elif node.op_type != "Constant" and dtype not in spec["types"]:
                problems.append(f"{where}: input {i} is {dtype}; TensorRT supports {spec['types']}")
        for i in CONSTANT_INPUTS.get(node.op_type, ()):
            if len(node.input) > i and node.input[i] and node.input[i] not in constants:
                problems.append(f"{where}: input {i} must be an initializer ({spec.get('restrictions')})")
        attrs = {a.name: a for a in node.attribute}
        if (
            node.op_type == "ScatterND"
            and "reduction" in attrs
            and attrs["reduction"].s not in (b"", b"none")
        ):
            problems.append(f"{where}: reduction {attrs['reduction'].s!r} is not supported")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: only the first output is supported")
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.DOUBLE:
            problems.append(f"tensor {value.name} is DOUBLE")
    return problems


@pytest.fixture(scope="module", params=["flow", "0.5"])
def graphs(request, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"trt-structure-{request.param}")
    write_tiny_checkpoint(root / "ckpt", request.param)
    policy = OnnxRuntimePolicy.from_checkpoint(root / "ckpt", cache_dir=root / "cache", num_steps=10)
    policy.close()
    found = {p.stem: p for p in (root / "cache").rglob("*.onnx")}
    assert set(found) == {"prefix", "denoise"}, found
    return found


@pytest.mark.parametrize("graph", ["prefix", "denoise"])
def test_exported_graph_uses_only_what_tensorrt_parses(graphs, graph):
    problems = tensorrt_violations(graphs[graph])
    assert not problems, "\n".join(problems)


def test_the_known_risks_are_looked_at(graphs):
    """docs/export.md named two risks: int64 ScatterND (image and state tokens written into the
    embeddings) and a boolean Trilu (action-block mask). The prefix graph does hold ScatterND with
    int64 indices, so the check above has judged it (TensorRT 10 lists INT64); the mask is built
    from constants and folded at export, so no Trilu reaches either graph."""
    ops = {
        name: {n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node}
        for name, p in graphs.items()
    }
    assert "ScatterND" in ops["prefix"]
    assert "Trilu" not in ops["prefix"] | ops["denoise"]
    assert {"MatMul", "Softmax"} <= ops["denoise"]


def test_the_checker_finds_what_tensorrt_refuses(tmp_path):
    """A graph with an unsupported operator, a DOUBLE tensor and a non-constant Unsqueeze axis."""
    from onnx import helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 3])
    nodes = [
        helper.make_node("Unique", ["x"], ["u"]),
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE),
        helper.make_node("Unsqueeze", ["x", "axes"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "bad", [x, axes], [y, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "bad_for_tensorrt.onnx"
    onnx.save(model, str(path))
    problems = "\n".join(tensorrt_violations(path))
    assert "Unique" in problems and "not supported" in problems
    assert "DOUBLE" in problems
    assert "Unsqueeze" in problems and "initializer" in problems
