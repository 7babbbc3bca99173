"""The intervention layer: the only module of sev-bench that touches PyTorch forward hooks.

An `InterventionSpec` says what to change (site, layer, channels), how (op, value) and where in the
sequence (positions). `HookSession(loaded, specs, captures)` is a context manager that registers every
hook it needs or none, and removes every handle on exit, also when the body or the registration raises.
It can also record activations at the last prompt token (`Capture`), which is how discovery reads them.

Sites (module paths come from the model's `ArchAdapter`):
- `resid_post`: a decoder layer's output (the residual stream after the layer);
- `attn_out` / `mlp_out`: the attention / MLP sublayer output, before it is added to the residual;
- `attn_head`: the input of the attention output projection, split per head (`index` = head numbers);
- `mlp_neuron`: the input of the MLP down projection, i.e. the gated activations (`index` = neurons);
- `resid_mid` (capture only): the residual after the attention sublayer, `h_in + attn_out`;
- `mlp_in` (capture only): the input of the layer's MLP block, i.e. the normalised mid residual the MLP
  reads (`post_attention_layernorm(h_mid)` in Llama / Qwen: h_mid / RMS(h_mid) times the norm's gain);
- `resid_final` (capture only, layer = the last layer): the output of the model's final norm, i.e. the
  post-norm last hidden state the LM head reads.

Captures read the prompt's last token at prefill, or (`Capture(..., decode=True)`) the last token of each
decode call instead: discovery prefills a prompt without its last token, then runs that token as one
decode step carrying many differently-changed copies of each prompt (per-row specs), which gives the
last-token effect of each change at the cost of one token. `HookSession(..., stop_after=(site, layer))`
ends the forward once that site is computed (the layers above it do not run); the session swallows the
`ForwardStopped` it raises, so the block after the model call is skipped and the captures are read
after the `with`.

Positions are told apart by the KV cache: a forward call that starts with an empty cache is the prompt
(prefill); every later call of the same generation carries generated tokens, one per decode step.
`last_prompt` is each row's last non-padding prompt token (found from the attention mask, so left and
right padding both work); `prompt` is every non-padding prompt token; `generated` is every new token.
Generation must use the KV cache (the transformers default), otherwise every call looks like a prompt.
A session can be entered around each forward call only (the HF backend's decoder does, so that nothing
between its steps sees the hooks); its per-call state is rebuilt at every call. When the rows of the batch
change between calls (finished rows leave, prefilled prompts join), `select_rows` says which rows of the
per-row values ([n, k]) the next calls carry.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

SITES = ("resid_post", "attn_out", "mlp_out", "attn_head", "mlp_neuron")
CAPTURE_SITES = ("resid_mid", "mlp_in", "resid_post", "attn_head", "mlp_neuron", "resid_final")
OPS = ("add", "scale", "set", "ablate")
POSITIONS = ("last_prompt", "prompt", "generated")
NORMS = ("none", "rms")


@dataclass(frozen=True)
class InterventionSpec:
    """One change to one site of one layer.

    - `index`: for `attn_head` the head numbers, for `mlp_neuron` the neuron numbers, for the other sites
      optional channel numbers; None means every channel of the site.
    - `value`: `add` adds it, `scale` multiplies by it, `set` writes it, `ablate` ignores it (zeros).
      A float, or a tensor of the selected channels' width ([k], or [batch, k] for one row each; a loop
      whose batch changes between forward calls says which rows a call carries: `HookSession.select_rows`).
    - `norm="rms"` multiplies an added value by each token's RMS over the whole site (the paper's
      steering: h <- h + alpha * RMS(h) * v).
    """

    site: str
    layer: int
    op: str
    value: Any = None
    index: tuple[int, ...] | None = None
    positions: frozenset[str] = frozenset({"last_prompt", "generated"})
    norm: str = "none"

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"unknown intervention site {self.site!r}; expected one of {', '.join(SITES)}")
        if self.op not in OPS:
            raise ValueError(f"unknown intervention op {self.op!r}; expected one of {', '.join(OPS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {', '.join(NORMS)}")
        positions = frozenset([self.positions] if isinstance(self.positions, str) else self.positions)
        if not positions or positions - set(POSITIONS):
            raise ValueError(f"positions must be a non-empty subset of {', '.join(POSITIONS)}")
        object.__setattr__(self, "positions", positions)
        if self.index is not None:
            index = (self.index,) if isinstance(self.index, int) else tuple(int(i) for i in self.index)
            object.__setattr__(self, "index", index)
        if self.op != "ablate" and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")


@dataclass(frozen=True)
class Capture:
    """Record `site` of `layer` at each row's last prompt token (prefill only), or with `decode=True` at
    the last token of each decode call (decode calls only)."""

    site: str
    layer: int
    decode: bool = False

    def __post_init__(self) -> None:
        if self.site not in CAPTURE_SITES:
            raise ValueError(f"unknown capture site {self.site!r}; expected one of {', '.join(CAPTURE_SITES)}")


@dataclass
class _CallState:
    """What the current forward call covers: set by the model-level pre-hook before any layer runs."""

    past_length: int = 0  # tokens already in the KV cache
    prompt_mask: Any = None  # [batch, prompt_len] attention mask of the prompt (1 = real token)
    prompt_length: int = 0
    last_prompt_index: Any = None  # [batch] position of each row's last real prompt token
    position_masks: dict = field(default_factory=dict)  # cache: frozenset(positions) -> [batch, seq] bool


class ForwardStopped(Exception):
    """Raised inside the model by a session's `stop_after` hook; the session that raised it swallows it."""

    def __init__(self, session) -> None:
        super().__init__("forward stopped early by a HookSession")
        self.session = session


class HookSession:
    """Context manager: `with HookSession(loaded, specs, captures) as session: model.generate(...)`.

    After the block, `session.captured[(site, layer)]` holds the captured activations, one [batch, width]
    float tensor per prefill forward call, on the CPU. `session.tokens_changed[(site, layer)]` counts the
    generated tokens each site changed during decoding (tests use it)."""

    def __init__(self, loaded, specs=(), captures=(), stop_after: tuple[str, int] | None = None) -> None:
        self.loaded = loaded
        self.specs = list(specs)
        self.captures = list(captures)
        self.stop_after = stop_after
        self.captured: dict[tuple[str, int], list] = defaultdict(list)
        self.decode_calls = 0  # forward calls of the model that carried generated tokens
        self.tokens_changed: dict[tuple[str, int], int] = defaultdict(int)  # generated tokens hit, per site
        self._state = _CallState()
        self._rows = None  # which rows of per-row values the coming forward calls carry (None: all, in order)
        self._handles: list = []
        self._validate()

    def select_rows(self, rows) -> None:
        """The coming forward calls carry these rows (indices into every per-row value, [n, k]), in this
        order; None: all rows, in order. A generation loop whose batch changes between calls (finished
        rows leave, waiting prompts join) calls it before each forward, so each row keeps its value."""
        self._rows = None if rows is None else [int(row) for row in rows]

    # ----------------------------------------------------------- validation and registration

    def _validate(self) -> None:
        n_layers = self.loaded.num_layers
        for item in [*self.specs, *self.captures]:
            if not 0 <= item.layer < n_layers:
                raise ValueError(f"{item.site} layer {item.layer} is out of range: the model has {n_layers} layers")
        for capture in self.captures:
            if capture.site == "resid_final" and capture.layer != n_layers - 1:
                raise ValueError(f"resid_final is read after the last layer: give layer {n_layers - 1}")
        if self.stop_after is not None:
            site, layer = self.stop_after
            if site not in ("resid_mid", "mlp_in", "resid_post", "resid_final") or not 0 <= layer < n_layers:
                raise ValueError(
                    f"stop_after={self.stop_after!r}: expected (resid_mid|mlp_in|resid_post|resid_final, "
                    "layer in range)"
                )
        for spec in self.specs:
            width = self._site_width(spec.site)
            if spec.index is not None and not all(0 <= i < self._index_limit(spec.site) for i in spec.index):
                raise ValueError(f"{spec.site} index out of range (0..{self._index_limit(spec.site) - 1})")
            if spec.site == "attn_head" and spec.index is not None:
                width = len(spec.index) * self.loaded.head_dim
            elif spec.index is not None:
                width = len(spec.index)
            if spec.value is not None and not isinstance(spec.value, (int, float)):
                if spec.value.shape[-1] != width:
                    raise ValueError(
                        f"{spec.site} layer {spec.layer}: value has width {spec.value.shape[-1]}, expected {width}"
                    )

    def _site_width(self, site: str) -> int:
        config = self.loaded.model.config
        if site == "attn_head":
            return self.loaded.num_heads * self.loaded.head_dim
        if site == "mlp_neuron":
            return config.intermediate_size
        return config.hidden_size

    def _index_limit(self, site: str) -> int:
        return self.loaded.num_heads if site == "attn_head" else self._site_width(site)

    def __enter__(self) -> HookSession:
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        self._remove()
        return isinstance(exc, ForwardStopped) and exc.session is self

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _module(self, layer: int, path: str):
        return self.loaded.layer(layer).get_submodule(path)

    def _register(self) -> None:
        model = self.loaded.model
        adapter = self.loaded.adapter
        self._handles.append(model.register_forward_pre_hook(self._on_model_call, with_kwargs=True))

        by_module: dict[tuple[str, int], list[InterventionSpec]] = defaultdict(list)
        for spec in self.specs:
            by_module[(spec.site, spec.layer)].append(spec)
        for (site, layer), specs in by_module.items():
            if site == "resid_post":
                self._handles.append(self.loaded.layer(layer).register_forward_hook(self._output_hook(specs, site)))
            elif site == "attn_out":
                module = self._module(layer, adapter.attn_residual)
                self._handles.append(module.register_forward_hook(self._output_hook(specs, site)))
            elif site == "mlp_out":
                module = self._module(layer, adapter.mlp_residual)
                self._handles.append(module.register_forward_hook(self._output_hook(specs, site)))
            else:  # attn_head / mlp_neuron: the input of a projection
                path = adapter.attn_out_proj if site == "attn_head" else adapter.mlp_down_proj
                self._handles.append(self._module(layer, path).register_forward_pre_hook(self._input_hook(specs)))

        for capture in self.captures:
            self._register_capture(capture)
        if self.stop_after is not None:  # registered last: the captures of the same module run first
            site, layer = self.stop_after
            if site == "resid_final":
                module = self.loaded.model.get_submodule(adapter.final_norm)
            elif site == "resid_post":
                module = self.loaded.layer(layer)
            elif site == "mlp_in":  # before the MLP runs: its input is all that is read
                module = self._module(layer, adapter.mlp)
                self._handles.append(module.register_forward_pre_hook(self._stop_before))
                return
            else:
                module = self._module(layer, adapter.attn_residual)
            self._handles.append(module.register_forward_hook(self._stop))

    def _stop(self, module, args, output) -> None:
        raise ForwardStopped(self)

    def _stop_before(self, module, args) -> None:
        raise ForwardStopped(self)

    def _register_capture(self, capture: Capture) -> None:
        adapter = self.loaded.adapter
        key = (capture.site, capture.layer)
        if capture.site in ("resid_post", "resid_final"):
            if capture.site == "resid_final":
                module = self.loaded.model.get_submodule(adapter.final_norm)
            else:
                module = self.loaded.layer(capture.layer)
            self._handles.append(
                module.register_forward_hook(lambda m, a, out: self._record(key, _first(out), capture.decode))
            )
        elif capture.site == "resid_mid":
            # h_mid = h_in + attn_out: remember the layer input, add the attention sublayer's output to it.
            layer_inputs: dict[str, Any] = {}

            def remember_input(module, args, kwargs):
                layer_inputs["h"] = args[0] if args else kwargs["hidden_states"]

            def add_attention(module, args, output):
                self._record(key, layer_inputs.pop("h") + _first(output), capture.decode)

            self._handles.append(
                self.loaded.layer(capture.layer).register_forward_pre_hook(remember_input, with_kwargs=True)
            )
            module = self._module(capture.layer, adapter.attn_residual)
            self._handles.append(module.register_forward_hook(add_attention))
        elif capture.site == "mlp_in":

            def read_mlp_input(module, args, kwargs):
                self._record(key, args[0] if args else next(iter(kwargs.values())), capture.decode)

            module = self._module(capture.layer, adapter.mlp)
            self._handles.append(module.register_forward_pre_hook(read_mlp_input, with_kwargs=True))
        else:
            path = adapter.attn_out_proj if capture.site == "attn_head" else adapter.mlp_down_proj
            module = self._module(capture.layer, path)
            self._handles.append(
                module.register_forward_pre_hook(lambda m, args: self._record(key, args[0], capture.decode))
            )

    # ----------------------------------------------------------- hooks

    def _on_model_call(self, module, args, kwargs) -> None:
        """Before each forward of the whole model: is this the prompt, or decode steps after it?"""
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs["inputs_embeds"]
        shape = tokens.shape
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        state = _CallState(past_length=int(past))
        if past == 0:
            import torch

            mask = kwargs.get("attention_mask")
            if mask is None or mask.dim() != 2:
                mask = torch.ones(shape[0], shape[1], dtype=torch.long, device=tokens.device)
            state.prompt_mask = mask[:, : shape[1]].bool()
            state.prompt_length = shape[1]
            positions = torch.arange(shape[1], device=mask.device)
            state.last_prompt_index = torch.where(state.prompt_mask, positions, -1).max(dim=1).values
        else:
            state.prompt_length = self._state.prompt_length
            state.prompt_mask = self._state.prompt_mask
            state.last_prompt_index = self._state.last_prompt_index
            self.decode_calls += 1
        self._state = state

    def _positions_mask(self, positions: frozenset[str], batch: int, seq: int, device):
        """[batch, seq] bool: which tokens of the current call the positions cover (None = all)."""
        state = self._state
        key = (positions, batch, seq)
        if key in state.position_masks:
            return state.position_masks[key]
        import torch

        if state.past_length == 0:  # the prompt
            mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
            if "prompt" in positions:
                mask |= state.prompt_mask
            if "last_prompt" in positions:
                mask[torch.arange(batch, device=device), state.last_prompt_index] = True
        else:  # decode steps: only generated tokens
            mask = None if "generated" in positions else torch.zeros(batch, seq, dtype=torch.bool, device=device)
        state.position_masks[key] = mask
        return mask

    def _apply(self, tensor, specs: list[InterventionSpec], site: str):
        """`tensor` [batch, seq, width] with `specs` applied; the input itself is never modified."""
        import torch

        out = tensor
        batch, seq = tensor.shape[:2]
        for spec in specs:
            where = self._positions_mask(spec.positions, batch, seq, tensor.device)
            if where is not None and not bool(where.any()):
                continue
            channels = self._channels(spec, site)
            current = out if channels is None else out[..., channels]
            if spec.op == "ablate":
                changed = torch.zeros_like(current)
            else:
                value = spec.value
                if not isinstance(value, (int, float)):
                    value = value.to(device=current.device, dtype=current.dtype)
                    if value.dim() == 2:  # one value per row
                        value = (value if self._rows is None else value[self._rows])[:, None, :]
                if spec.op == "add":
                    if spec.norm == "rms":
                        rms = out.float().pow(2).mean(dim=-1, keepdim=True).sqrt().to(current.dtype)
                        value = value * rms
                    changed = current + value
                elif spec.op == "scale":
                    changed = current * value
                else:  # set
                    changed = torch.zeros_like(current) + value
            if where is not None:
                changed = torch.where(where[..., None], changed, current)
            elif self._state.past_length:
                self.tokens_changed[(site, spec.layer)] += batch * seq
            if channels is None:
                out = changed
            else:
                out = out.clone()
                out[..., channels] = changed
        return out

    def _channels(self, spec: InterventionSpec, site: str):
        if spec.index is None:
            return None
        if site == "attn_head":
            head_dim = self.loaded.head_dim
            return [head * head_dim + offset for head in spec.index for offset in range(head_dim)]
        return list(spec.index)

    def _output_hook(self, specs, site):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (self._apply(output[0], specs, site), *output[1:])
            return self._apply(output, specs, site)

        return hook

    def _input_hook(self, specs):
        site = specs[0].site

        def hook(module, args):
            return (self._apply(args[0], specs, site), *args[1:])

        return hook

    def _record(self, key, tensor, decode: bool = False) -> None:
        state = self._state
        if (state.past_length != 0) != decode:
            return  # a prompt capture reads prefill calls only, a decode capture decode calls only
        rows = tensor[:, -1] if decode else tensor[range(tensor.shape[0]), state.last_prompt_index]
        self.captured[key].append(rows.detach().float().cpu())


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def handle_count(model) -> int:
    """Forward hooks and pre-hooks registered anywhere in `model` (tests check that none leak)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
