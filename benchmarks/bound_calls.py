"""One-node onnxruntime calls timed as a model runs its ops: input rows 64-byte aligned (onnxruntime's arena
alignment; numpy's own 16- or 32-byte alignment splits every 64-byte row piece over two cache lines) and the output
written into a bound, preallocated buffer (io_binding) instead of copied into a new numpy array after every call.
With operands cold, as inside a model once the other ops have run: calls that go round several copies of a GEMM
(own weights, rows and output), in sessions that do not spin between calls."""
from __future__ import annotations

import numpy as np


def aligned_array(values: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A copy of values whose data starts at a multiple of `alignment` bytes."""
    buffer = np.empty(values.nbytes + alignment, np.uint8)
    offset = -buffer.ctypes.data % alignment
    out = buffer[offset:offset + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def bound_run(session, feeds: dict, output_shape: tuple, output_dtype):
    """A call of session on feeds (bound once) writing its one output into a preallocated aligned buffer."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    out = aligned_array(np.zeros(output_shape, output_dtype))
    binding.bind_output(session.get_outputs()[0].name, "cpu", 0, output_dtype, out.shape, out.ctypes.data)
    bound = (feeds, out)  # the binding holds raw pointers: these arrays must live as long as the call

    def run() -> np.ndarray:
        session.run_with_iobinding(binding)
        return bound[1]
    return run


# --cold: calls go round this many copies of each GEMM, so that every call finds its operands outside the cores'
# L2 caches (each copy's weights, rows and output are its own), as a linear inside a model does.
COLD_COPIES = 8
COLD_HELP = (f"kernel: calls go round {COLD_COPIES} copies of each GEMM (own weights, rows, output), so that operands "
             "come from L3 or memory as inside a model; sessions do not spin")


def no_spinning(options) -> None:
    """Session options for many sessions called one at a time: idle pool threads must not spin on the cores."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def round_robin(calls: list):
    """A call that runs calls[0], then calls[1] on its next call, and so on round."""
    if len(calls) == 1:
        return calls[0]
    turn = iter(range(1 << 62))
    return lambda: calls[next(turn) % len(calls)]()
