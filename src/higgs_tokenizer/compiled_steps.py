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
using it (with a warning) until `compile` is called again.
"""

from __future__ import annotations

import types
import warnings
import weakref

import torch

from .streaming import DecoderPlan, _time_major, decode_step, new_state, steady_layers


class CompiledSteps:
    """A model's steady streaming step, compiled for chosen (batch, frames) shapes."""

    def __init__(self, model):
        self.model = model
        self.shapes: set[tuple[int, int]] = set()
        self._function = None
        self._weights = None
        self._warming: tuple[int, int] | None = None
        self.steps_run = 0  # steps that ran compiled
        # Where each weight of the decoder is, found once: walking the modules on every step
        # would cost more than the step's other checks together.
        decoder = model.acoustic_decoder
        self._weight_places = [(m, name) for m in decoder.modules() for name, p in m._parameters.items() if p is not None]
        # Loading weights in place (under inference mode, unseen by version counters) too.
        reference = weakref.ref(self)
        model.acoustic_decoder.register_load_state_dict_pre_hook(lambda *args: _forget_weights(reference))

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
                return steady_layers(decoder, buffers, latents, time_major)

            function = types.FunctionType(step.__code__.replace(), step.__globals__, "step", None, step.__closure__)
            self._function = torch.compile(function, dynamic=False)
            self._weights, self.shapes = self._weights_key(), set()
        limit = len(self.shapes) + len(shapes) + 1
        # Freezing is read from the global config when a program is made (not from options).
        with (
            torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=8 * limit),
            torch._inductor.config.patch(freezing=True),
        ):
            for shape in sorted(shapes - self.shapes):
                self._warm(*shape)
                self.shapes.add(shape)

    def step_for(self, batch: int, frames: int):
        """The compiled step for this shape, `(buffers, latents) -> (audio, buffers)`, or None
        when it has not been compiled (or the weights changed since)."""
        warming = (batch, frames) == self._warming
        if (batch, frames) not in self.shapes and not warming:
            return None
        if self._weights != self._weights_key():
            warnings.warn("the model's weights changed since its streaming step was compiled: "
                          "steps run eagerly until CompiledSteps.compile is called again", stacklevel=3)
            self.shapes = set()
            return None

        def run(buffers: dict[str, torch.Tensor], latents: torch.Tensor):
            # Never compile in a live step: an input the program was not made for (which no
            # step should give) runs eagerly instead, and the shape is dropped.
            try:
                with torch.compiler.set_stance("default" if warming else "fail_on_recompile"):
                    result = self._function(buffers, latents)
            except RuntimeError as error:
                if "fail_on_recompile" not in str(error):
                    raise
                warnings.warn(f"the compiled streaming step does not fit this step; it runs eagerly ({error})", stacklevel=3)
                self.shapes.discard((batch, frames))
                return None
            self.steps_run += 1
            return result

        return run

    def _warm(self, batch: int, frames: int) -> None:
        """Compile one shape: step streams of zero codes until a step is steady, which compiles."""
        model, plan = self.model, DecoderPlan(self.model)
        states = [new_state(model) for _ in range(batch)]
        codes = torch.zeros(batch, 1, frames, dtype=torch.long, device=model.device)
        self._warming = (batch, frames)
        try:
            with torch.inference_mode():
                while not _steady(plan, states):
                    decode_step(model, plan, states, codes)
                decode_step(model, plan, states, codes, compiled=self)
        finally:
            self._warming = None

    def _weights_key(self) -> tuple:
        """What identifies the decoder's weights as they are now: each one's storage and
        version, read from its module (so that a replaced weight counts too)."""
        weights = (module._parameters[name] for module, name in self._weight_places)
        return tuple((t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device) for t in weights)


def _steady(plan: DecoderPlan, states) -> bool:
    return all(s.produced.get(name, 0) >= t.lead for s in states for name, t in plan.timing.items())


def _forget_weights(reference: "weakref.ref[CompiledSteps]") -> None:
    compiled = reference()
    if compiled is not None:
        compiled._weights = None
