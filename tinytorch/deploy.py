"""Deployment: export tinytorch models to ONNX and run them in ONNX Runtime.

    from tinytorch import deploy
    proto = deploy.to_onnx(model, x[:1])          # an onnx.ModelProto, checked by onnx.checker
    deploy.save(proto, "digits_mlp.onnx")
    session = deploy.session(proto, threads=1)    # an onnxruntime.InferenceSession
    logits = deploy.run(session, x)

Hand-written plumbing (a file format's writer), not a notebook export. The graph is built
with the `onnx` package's own helpers (onnx.helper, onnx.numpy_helper), opset 17, and
computes what tinytorch computes, layer by layer:

- Linear: MatMul by the stored (out, in) weight transposed, then Add the bias;
- Conv2d: Conv with the same pads and strides; MaxPool2d: MaxPool (floor, as tinytorch);
  Flatten(start_dim): Reshape to the leading dims + (-1,); ReLU: Relu; Softmax(dim): Softmax(axis);
- GELU: tinytorch's tanh approximation written out as its formula
  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (opset 17 has no Gelu operator; ONNX
  Runtime fuses the pattern into its own Gelu kernel);
- LayerNorm: LayerNormalization over the last axis with the layer's own eps;
- Dropout: nothing (the export is the inference forward; a model in training mode with
  active dropout is refused);
- GPT: Gather for both embeddings (positions 0..T-1 sliced from the table), per block
  x + attn(ln1(x)) and x + mlp(ln2(x)); attention splits heads with Reshape/Transpose,
  multiplies q k^T by 1/sqrt(head_dim), adds the causal mask (0 on and below the diagonal,
  -inf above, built in the graph from T, so the sequence length is dynamic) and takes the
  Softmax over the last axis.

INT8 uses integer operators, not QDQ. Module 15's QuantizedLinear / QuantizedConv2d compute
    y = (s_x * s_w) * sum_k (q_x - z_x) q_w + b,   q_x = clip(rint(x / s_x) + z_x)
with an exact int32 sum and a float output, and the ONNX ops that say exactly this are
QuantizeLinear -> MatMulInteger (or ConvInteger) -> Cast -> Mul -> Add, with module 15's own
scales and zero points as constants. (QLinearMatMul/QLinearConv would need an output scale
module 15 never computed; in QDQ form the runtime decides which kernel runs.) The activations
go in as uint8 with zero point z_x + 128 (exactly the same integers as int8 with z_x, shifted),
because uint8 activations times int8 weights (u8s8) is the combination ONNX Runtime's x86
int8 kernels are built for (VNNI's vpdpbusd, AVX2's vpmaddubsw). (ConvInteger accepts int8
weights from onnxruntime 1.24 on: 1.23.2 has no such kernel, 1.24.1 has; hence the extra's lower
bound, which `session()` checks.) On an x86 CPU without VNNI, AVX2's vpmaddubsw adds
pairs of u8 x s8 products in 16 bits and can saturate; there `session()` turns on ONNX Runtime's
session.x64quantprecision, which swaps in exact (slower) u8u8 kernels. It is off where the CPU
has VNNI (its vpdpbusd accumulates in int32 and cannot saturate): measured here, the option
would make the INT8 1024 -> 4096 layer at batch 64 about 2x slower on a VNNI CPU for nothing.

Models: a Sequential (or single layer) of the layers above, and GPT. Anything else raises a
TypeError that names the layer and lists what is supported. The quantized layers are
recognized by class name (QuantizedLinear, QuantizedConv2d), so a student's own notebook
classes export as well as the package's. onnx and onnxruntime are the optional `deploy`
extra: pip install -e ".[deploy]".
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

import numpy as np
from packaging.version import Version

import tinytorch.core as tc

OPSET = 17
IR_VERSION = 8  # the IR of opset 17 (onnx 1.12): every ONNX Runtime that runs opset 17 loads it
MIN_ONNXRUNTIME = "1.24"
CPUINFO = Path("/proc/cpuinfo")
INSTALL = 'ONNX export needs the optional deploy extra (onnx and onnxruntime): pip install -e ".[deploy]"'

SUPPORTED = ("Sequential", "Linear", "Conv2d", "MaxPool2d", "Flatten", "ReLU", "GELU", "Softmax", "LayerNorm",
             "Dropout", "Embedding", "QuantizedLinear", "QuantizedConv2d", "MultiHeadAttention", "MLP",
             "TransformerBlock", "GPT")


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as exc:
        raise ImportError(f"{INSTALL} ({name} is missing: {exc})") from exc


def available() -> bool:
    """True when onnx and onnxruntime import, and onnxruntime is new enough (MIN_ONNXRUNTIME)."""
    try:
        _import("onnx")
        ort = _import("onnxruntime")
    except ImportError:
        return False
    return Version(ort.__version__) >= Version(MIN_ONNXRUNTIME)


class _Graph:
    """Nodes and constants of the graph being built, with unique names."""

    def __init__(self, onnx):
        self.onnx, self.helper, self.nph = onnx, onnx.helper, onnx.numpy_helper
        self.nodes, self.initializers, self.names, self.cache = [], [], set(), {}

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def const(self, array, name: str) -> str:
        name = self._unique(name)
        self.initializers.append(self.nph.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        out = self._unique(name)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


# ---- one emitter per layer: (graph, module, input name, path) -> output name -------------------

def _linear(g, m, x, path):
    y = g.op("MatMul", [x, g.const(m.weight.data.T.astype(np.float32), f"{path}.weight_t")], f"{path}/MatMul")
    if m.bias is not None:
        y = g.op("Add", [y, g.const(m.bias.data.astype(np.float32), f"{path}.bias")], f"{path}/Add")
    return y


def _conv2d(g, m, x, path):
    inputs = [x, g.const(m.weight.data.astype(np.float32), f"{path}.weight")]
    if m.bias is not None:
        inputs.append(g.const(m.bias.data.astype(np.float32), f"{path}.bias"))
    ph, pw = m.padding
    return g.op("Conv", inputs, f"{path}/Conv", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                pads=[ph, pw, ph, pw])


def _quantize_input(g, m, x, path):
    """QuantizeLinear to uint8 with module 15's activation scale and zero point (int8 + 128)."""
    p = m.act_params
    zero = int(np.asarray(p.zero_point)) + (128 if p.dtype == "int8" else 0)
    if not 0 <= zero <= 255:
        raise ValueError(f"{path}: activation zero point {int(np.asarray(p.zero_point))} does not fit {p.dtype}")
    zp = g.const(np.array(zero, np.uint8), f"{path}.x_zero_point")
    q = g.op("QuantizeLinear", [x, g.const(np.array(np.asarray(p.scale).item(), np.float32), f"{path}.x_scale"), zp],
             f"{path}/QuantizeLinear")
    if p.qmin + (128 if p.dtype == "int8" else 0) > 0:  # symmetric int8: [-127, 127], not [-128, 127]
        low = g.const(np.array(p.qmin + 128, np.uint8), f"{path}.x_qmin")
        q = g.op("Clip", [q, low], f"{path}/Clip")
    return q, zp


def _rescale(g, m, acc, path, shape):
    """int32 sums -> float32 * (s_x * s_w) + bias, as module 15's forward."""
    scale = np.float32(np.asarray(m.act_params.scale).item()) * np.asarray(m.weight_scale).astype(np.float32)
    y = g.op("Cast", [acc], f"{path}/Cast", to=g.onnx.TensorProto.FLOAT)
    y = g.op("Mul", [y, g.const(scale.reshape(shape) if scale.ndim else scale, f"{path}.scale")], f"{path}/Mul")
    if m.bias is not None:
        y = g.op("Add", [y, g.const(m.bias.data.astype(np.float32).reshape(shape), f"{path}.bias")], f"{path}/Add")
    return y


def _quantized_linear(g, m, x, path):
    q, zp = _quantize_input(g, m, x, path)
    w = g.const(np.asarray(m.weight_int8, np.int8).T, f"{path}.weight_int8_t")
    acc = g.op("MatMulInteger", [q, w, zp], f"{path}/MatMulInteger")
    return _rescale(g, m, acc, path, (-1,))


def _quantized_conv2d(g, m, x, path):
    q, zp = _quantize_input(g, m, x, path)
    w = g.const(np.asarray(m.weight_int8, np.int8), f"{path}.weight_int8")
    ph, pw = m.padding
    acc = g.op("ConvInteger", [q, w, zp], f"{path}/ConvInteger", kernel_shape=list(m.kernel_size),
               strides=list(m.stride), pads=[ph, pw, ph, pw])
    return _rescale(g, m, acc, path, (1, -1, 1, 1))


def _max_pool(g, m, x, path):
    return g.op("MaxPool", [x], f"{path}/MaxPool", kernel_shape=list(m.kernel_size), strides=list(m.stride))


def _flatten(g, m, x, path):
    shape = g.const(np.array([0] * m.start_dim + [-1], np.int64), f"{path}.shape")
    return g.op("Reshape", [x, shape], f"{path}/Reshape")


def _gelu(g, m, x, path):
    c = lambda v, n: g.const(np.array(v, np.float32), f"{path}.{n}")  # noqa: E731
    cube = g.op("Mul", [g.op("Mul", [x, x], f"{path}/x2"), x], f"{path}/x3")
    inner = g.op("Add", [x, g.op("Mul", [cube, c(tc.functional.GELU_CUBIC, "k")], f"{path}/kx3")], f"{path}/inner")
    t = g.op("Tanh", [g.op("Mul", [inner, c(tc.functional.GELU_SCALE, "sqrt_2_over_pi")], f"{path}/scaled")],
             f"{path}/Tanh")
    half_x = g.op("Mul", [x, c(0.5, "half")], f"{path}/half_x")
    return g.op("Mul", [half_x, g.op("Add", [t, c(1.0, "one")], f"{path}/one_plus_t")], f"{path}/Gelu")


def _softmax(g, m, x, path):
    return g.op("Softmax", [x], f"{path}/Softmax", axis=int(m.dim))


def _layer_norm(g, m, x, path):
    return g.op("LayerNormalization", [x, g.const(m.weight.data.astype(np.float32), f"{path}.weight"),
                                       g.const(m.bias.data.astype(np.float32), f"{path}.bias")],
                f"{path}/LayerNormalization", axis=-1, epsilon=float(m.eps))


def _dropout(g, m, x, path):
    if m.training and m.p > 0:
        raise ValueError(f"{path or 'the model'} is a Dropout(p={m.p}) in training mode: the export is the "
                         "inference forward; call model.eval() first")
    return x


def _embedding(g, m, x, path):
    return g.op("Gather", [g.const(m.weight.data.astype(np.float32), f"{path}.weight"), x], f"{path}/Gather")


def _sequence_length(g, x):
    """T of a (B, T, ...) tensor as a scalar int64 (built once per input)."""
    key = ("T", x)
    if key not in g.cache:
        t = g.op("Shape", [x], "T_1d", start=1, end=2)
        g.cache[key] = (t, g.op("Squeeze", [t, g.const(np.array([0], np.int64), "axis0")], "T"))
    return g.cache[key]


def _causal_mask(g, x):
    """(T, T) float32: 0 where j <= i, -inf above the diagonal (tinytorch's causal_mask(T))."""
    if "mask" not in g.cache:
        _, t = _sequence_length(g, x)
        r = g.op("Range", [g.const(np.array(0, np.int64), "zero"), t, g.const(np.array(1, np.int64), "one")],
                 "positions")
        rows = g.op("Unsqueeze", [r, g.const(np.array([1], np.int64), "axis1")], "rows")
        cols = g.op("Unsqueeze", [r, g.const(np.array([0], np.int64), "axis0_")], "cols")
        future = g.op("Greater", [cols, rows], "future")
        g.cache["mask"] = g.op("Where", [future, g.const(np.array(-np.inf, np.float32), "minus_inf"),
                                         g.const(np.array(0.0, np.float32), "zero_f")], "causal_mask")
    return g.cache["mask"]


def _attention(g, m, x, path):
    h, d = m.num_heads, m.head_dim
    split = g.const(np.array([0, 0, h, d], np.int64), f"{path}.split_shape")
    heads = {}
    for name in ("q_proj", "k_proj", "v_proj"):
        y = _emit(g, getattr(m, name), x, f"{path}.{name}")
        y = g.op("Reshape", [y, split], f"{path}/{name}_split")
        heads[name] = g.op("Transpose", [y], f"{path}/{name}_heads", perm=[0, 2, 1, 3])  # (B, H, T, D)
    k_t = g.op("Transpose", [heads["k_proj"]], f"{path}/k_t", perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [heads["q_proj"], k_t], f"{path}/scores")
    scores = g.op("Mul", [scores, g.const(np.array(1.0 / math.sqrt(d), np.float32), f"{path}.scale")],
                  f"{path}/scaled_scores")
    if m.causal:
        scores = g.op("Add", [scores, _causal_mask(g, x)], f"{path}/masked_scores")
    weights = g.op("Softmax", [scores], f"{path}/Softmax", axis=-1)
    y = g.op("MatMul", [weights, heads["v_proj"]], f"{path}/weighted_values")
    y = g.op("Transpose", [y], f"{path}/merge", perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, g.const(np.array([0, 0, m.embed_dim], np.int64), f"{path}.merge_shape")],
             f"{path}/merged")
    return _emit(g, m.out_proj, y, f"{path}.out_proj")


def _mlp(g, m, x, path):
    y = _emit(g, m.fc, x, f"{path}.fc")
    y = _emit(g, m.gelu, y, f"{path}.gelu")
    return _emit(g, m.proj, y, f"{path}.proj")


def _block(g, m, x, path):
    a = _emit(g, m.attn, _emit(g, m.ln1, x, f"{path}.ln1"), f"{path}.attn")
    x = g.op("Add", [x, a], f"{path}/residual1")
    return g.op("Add", [x, _emit(g, m.mlp, _emit(g, m.ln2, x, f"{path}.ln2"), f"{path}.mlp")], f"{path}/residual2")


def _gpt(g, m, tokens, path):
    t_1d, _ = _sequence_length(g, tokens)
    x = _emit(g, m.tok_emb, tokens, "tok_emb")
    pos = g.op("Slice", [g.const(m.pos_emb.weight.data.astype(np.float32), "pos_emb.weight"),
                         g.const(np.array([0], np.int64), "start0"), t_1d], "pos_emb/Slice")  # rows 0..T-1
    x = g.op("Add", [x, pos], "embeddings")
    for i, block in enumerate(m.blocks):
        x = _emit(g, block, x, f"blocks.{i}")
    return _emit(g, m.lm_head, _emit(g, m.ln_f, x, "ln_f"), "lm_head")


def _sequential(g, m, x, path):
    for name, child in m.named_children():
        x = _emit(g, child, x, f"{path}.{name}" if path else name)
    return x


EMITTERS = {tc.Sequential: _sequential, tc.Linear: _linear, tc.Conv2d: _conv2d, tc.MaxPool2d: _max_pool,
            tc.Flatten: _flatten, tc.ReLU: lambda g, m, x, p: g.op("Relu", [x], f"{p}/Relu"), tc.GELU: _gelu,
            tc.Softmax: _softmax, tc.LayerNorm: _layer_norm, tc.Dropout: _dropout, tc.Embedding: _embedding,
            tc.MultiHeadAttention: _attention, tc.MLP: _mlp, tc.TransformerBlock: _block, tc.GPT: _gpt}
BY_NAME = {"QuantizedLinear": _quantized_linear, "QuantizedConv2d": _quantized_conv2d}


def _emit(g, module, x, path: str) -> str:
    emitter = EMITTERS.get(type(module)) or BY_NAME.get(type(module).__name__)
    if emitter is None:
        where = f"layer {path!r} " if path else "the model "
        raise TypeError(f"cannot export {where}of type {type(module).__name__} to ONNX; "
                        f"supported: {', '.join(SUPPORTED)}")
    return emitter(g, module, x, path)


# ---- the public API ------------------------------------------------------------------------------

def to_onnx(model, example=None, name: str | None = None):
    """An onnx.ModelProto computing `model`'s forward (inference), checked by onnx.checker.

    model: a GPT, or a Sequential / single layer of the supported layers (FP32 or module 15's
    INT8 layers). example: for a Sequential/layer, one input batch (its shape after the batch
    axis is fixed, the batch axis is dynamic); for a GPT it is not needed (input `tokens`
    int64 (batch, sequence), output `logits` (batch, sequence, vocab), both dynamic).
    """
    onnx = _import("onnx")
    if not isinstance(model, tc.Module):
        raise TypeError(f"to_onnx needs a tinytorch Module, got {type(model).__name__}")
    helper = onnx.helper
    g = _Graph(onnx)
    if isinstance(model, tc.GPT):
        inp = helper.make_tensor_value_info("tokens", onnx.TensorProto.INT64, ["batch", "sequence"])
        out_shape = ["batch", "sequence", model.config.vocab_size]
        g.names.add("tokens")
        y = _emit(g, model, "tokens", "")
    else:
        if example is None:
            raise ValueError(f"to_onnx needs an example input batch for a {type(model).__name__} "
                             "(its shape after the batch axis fixes the graph's input shape)")
        x = np.asarray(example.data if isinstance(example, tc.Tensor) else example)
        if x.dtype != np.float32 or x.ndim < 2:
            raise ValueError(f"the example input must be a float32 batch with a batch axis, got {x.dtype} {x.shape}")
        with tc.no_grad():
            out = model(x).data  # the model must run on it, and this gives the output's shape
        inp = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", *x.shape[1:]])
        out_shape = ["batch", *out.shape[1:]]
        g.names.add("x")
        y = _emit(g, model, "x", "")
    g.nodes.append(helper.make_node("Identity", [y], ["logits"], name="output"))
    graph = helper.make_graph(g.nodes, name or type(model).__name__, [inp],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, out_shape)],
                              initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tinytorch",
                              ir_version=IR_VERSION)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save(proto, path) -> Path:
    """Write the ModelProto to `path` (atomically: a finished file or none); returns the path."""
    onnx = _import("onnx")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def u8s8_may_saturate() -> bool:
    """True on an x86 CPU whose flags (Linux /proc/cpuinfo) show no VNNI, or cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # ARM's int8 dot products (sdot/udot) accumulate in 32 bits
    try:
        flags = CPUINFO.read_text().split()
    except OSError:
        return True
    return not ({"avx512_vnni", "avx_vnni"} & set(flags))


def session(proto_or_path, threads: int | None = 1, exact_int8: bool | None = None):
    """An ONNX Runtime CPU session for a ModelProto or .onnx file.

    threads: intra-op threads (1 = one core; None or 0 = ONNX Runtime's default, all cores).
    exact_int8: use ONNX Runtime's non-saturating u8u8 kernels (session.x64quantprecision);
    None = only where u8s8 may saturate (an x86 CPU without VNNI, see the module docstring).
    """
    ort = _import("onnxruntime")
    if Version(ort.__version__) < Version(MIN_ONNXRUNTIME):
        raise ImportError(f"onnxruntime {ort.__version__} is too old (its ConvInteger has no int8 weights): "
                          f"tinytorch.deploy needs onnxruntime>={MIN_ONNXRUNTIME}; {INSTALL}")
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be None or an int >= 0, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if u8s8_may_saturate() if exact_int8 is None else exact_int8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    model = proto_or_path if isinstance(proto_or_path, (str, Path)) else proto_or_path.SerializeToString()
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options,
                                providers=["CPUExecutionProvider"])


def run(sess, x) -> np.ndarray:
    """The model's output for input `x` (float32 images, or int64 token ids for a GPT)."""
    inp = sess.get_inputs()[0]
    x = np.asarray(x.data if isinstance(x, tc.Tensor) else x)
    x = x.astype(np.int64 if inp.type == "tensor(int64)" else np.float32, copy=False)
    return sess.run(None, {inp.name: x})[0]


def greedy(sess, prompt, new_tokens: int, context_length: int) -> np.ndarray:
    """Greedy generation with an exported GPT: the whole (last context_length) sequence every
    step, as GPT.generate(temperature=0) does; returns prompt + new tokens, shape (B, T + n)."""
    tokens = np.atleast_2d(np.asarray(prompt, np.int64))
    for _ in range(new_tokens):
        logits = run(sess, tokens[:, -context_length:])
        tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return tokens
