"""Streaming steps compiled with `torch.compile`: the same layers as one fused program.

A 1-frame step of one stream runs about 35 Snake activations and 37 history updates
of a few thousand values each, between its convs; eagerly, each of their 400-odd small
operations costs PyTorch's fixed overhead, a third of the step on a 2-core CPU.
Compiled by inductor with the weights frozen, the elementwise work becomes a few fused
loops; the convs stay oneDNN's, with weights packed once (by inductor, or for the
few-column convs the eager step's own product, `layers.packed_linear`).

Only steady steps are compiled, where no value needs zeroing (from about the 11th
frame of a stream until its end), and only for the shapes (streams in the batch,
frames per step) that `compile` was given: compiling takes seconds to a minute each,
which a live step must not wait for. Any other step runs eagerly; both keep the same
state, so a stream moves between them freely. The audio is within float rounding of the
eager step's (the compiled kernels sum in another order), not bit for bit.

Needs what inductor needs: a C++ compiler on the CPU, Triton on a GPU. The weights are
frozen into the compiled program: a `CompiledSteps` whose model's weights change stops
using it (with a warning) until `compile` is called again. Changes that no version
counter sees (through `.data`, or in place under inference mode on weights made under
it) need `invalidate()`, and so do changes of a conv's settings in place (its dilation, say):
the programs skip dynamo's guards on modules, which would see them. A submodule replaced is
seen (`weights_key`). A
program, once made, stays in memory until the process ends
(inductor keeps its frozen weights), so a model has one `CompiledSteps` (`shared`).

One compiled step runs at a time in a process: torch.compile's stance is global. A step
that finds another one running, or a compile under way, runs eagerly.
"""

from __future__ import annotations

import threading
import types
import warnings
import weakref

import torch

from .causal_layers import DecoderLayers, steady_layers
from .streaming import DecoderPlan, _time_major, decode_step, new_state, steady
from .weights_key import DecoderWeights


# Held while a compiled program runs or compiles: `set_stance` is process-wide.
_RUN_LOCK = threading.Lock()


def shared(model) -> "CompiledSteps":
    """The model's `CompiledSteps` (one per model: the programs' memory is never given back)."""
    compiled = _SHARED.get(model)
    if compiled is None:
        compiled = _SHARED[model] = CompiledSteps(model)
    return compiled


_SHARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class CompiledSteps:
    """A model's steady streaming step, compiled for chosen (batch, frames) shapes."""

    def __init__(self, model):
        self._model = weakref.ref(model)  # not the model itself: `shared` keys it weakly
        self.shapes: set[tuple[int, int]] = set()
        self._function, self._code = None, None
        self._weights = None
        self._local = threading.local()  # .warming: the shape this thread is compiling
        self.steps_run = 0  # steps that ran compiled
        self._decoder_weights = DecoderWeights(model.acoustic_decoder)

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of these compiled steps is gone")
        return model

    def compile(self, batch_sizes=(1,), frames=(1,)) -> None:
        """Compile the step now for every pair of batch size and frames per step (a step of
        `batch` streams advancing `frames` frames each)."""
        import torch._dynamo  # here: importing them takes about a second
        import torch._inductor.config

        if not hasattr(torch.compiler, "set_stance") or not hasattr(torch._dynamo.config, "recompile_limit"):
            raise RuntimeError(f"compiled streaming steps need torch 2.7 or later, this is {torch.__version__}")
        shapes = {(int(b), int(k)) for b in batch_sizes for k in frames}
        if any(b < 1 or k < 1 for b, k in shapes):
            raise ValueError(f"batch sizes and frames must be positive, got {sorted(shapes)}")
        if self._function is None or self._weights != self._weights_key():
            # A function of its own (a new code object): torch.compile keeps its programs per
            # code object, and the old ones hold the old weights.
            decoder, time_major = self.model.acoustic_decoder, _time_major(self.model.device)

            def step(buffers: dict[str, torch.Tensor], latents: torch.Tensor):
                # The decoder from the closure, not an argument: so its weights are the
                # program's parameters, which freezing folds (packs) once.
                return steady_layers(DecoderLayers(decoder, eager=False), buffers, latents, time_major)

            # Globals of its own too: dynamo stores its compiled functions there.
            function = types.FunctionType(step.__code__.replace(), dict(step.__globals__), "step", None, step.__closure__)
            if self._function is not None:  # what can be freed of the old program
                torch._dynamo.eval_frame.remove_from_cache(self._code)
            # Dynamo's guards on the decoder's modules and weights cost a quarter of a
            # millisecond a step (a 1-frame step of one stream is 8 ms); `_weights_key`
            # checks on every step which weights the decoder holds and their values, and
            # other changes to its modules need `invalidate` (the module docstring).
            skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)  # torch >= 2.8
            options = {"guard_filter_fn": skip_module_guards} if skip_module_guards else {}
            program = torch.compile(function, dynamic=False, fullgraph=True, options=options)  # one program, or an error
            self._function, self._code = program, function.__code__
            weakref.finalize(self, torch._dynamo.eval_frame.remove_from_cache, function.__code__)
            self._weights, self.shapes = self._weights_key(), set()
        limit = len(self.shapes) + len(shapes) + 1
        # Freezing is read from the global config when a program is made (not from options).
        with (
            torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=8 * limit),
            torch._inductor.config.patch(freezing=True),
        ):
            for shape in sorted(shapes - self.shapes):
                before = self.steps_run
                self._warm(*shape)
                if self.steps_run == before:
                    raise RuntimeError(f"the streaming step of shape {shape} did not compile")
                self.shapes.add(shape)

    def invalidate(self) -> None:
        """Stop running the compiled programs, after a change of the weights that no version
        counter sees; `compile` makes them anew."""
        self._weights, self.shapes = None, set()

    def step_for(self, batch: int, frames: int):
        """The compiled step for this shape, `(buffers, latents) -> (audio, buffers)`, or None
        when it has not been compiled (or the weights changed since)."""
        warming = (batch, frames) == getattr(self._local, "warming", None)
        if (batch, frames) not in self.shapes and not warming:
            return None
        if self._weights != self._weights_key():
            warnings.warn("the model's weights changed since its streaming step was compiled: "
                          "steps run eagerly until CompiledSteps.compile is called again", stacklevel=3)
            self.shapes = set()
            return None

        def run(buffers: dict[str, torch.Tensor], latents: torch.Tensor):
            # A live step never waits, and never compiles: an input the program was not made
            # for (which no step should give) runs eagerly instead, and the shape is dropped.
            if not _RUN_LOCK.acquire(blocking=warming):
                return None
            try:
                with torch.compiler.set_stance("default" if warming else "fail_on_recompile"):
                    result = self._function(buffers, latents)
            except RuntimeError as error:
                if "fail_on_recompile" not in str(error):
                    raise
                warnings.warn(f"the compiled streaming step does not fit this step; it runs eagerly ({error})", stacklevel=3)
                self.shapes.discard((batch, frames))
                return None
            finally:
                _RUN_LOCK.release()
            self.steps_run += 1
            return result

        return run

    def _warm(self, batch: int, frames: int) -> None:
        """Compile one shape: step streams of zero codes until a step is steady, which compiles."""
        model, plan = self.model, DecoderPlan(self.model)
        states = [new_state(model) for _ in range(batch)]
        codes = torch.zeros(batch, 1, frames, dtype=torch.long, device=model.device)
        self._local.warming = (batch, frames)
        try:
            with torch.inference_mode():
                while not steady(plan, states):
                    decode_step(model, plan, states, codes)
                decode_step(model, plan, states, codes, programs=(self,))
        finally:
            self._local.warming = None

    def _weights_key(self) -> tuple:
        return self._decoder_weights.key()
