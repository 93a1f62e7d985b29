"""One run's events and the canvas of one of its rows at any step (Textual-free).

``RunState.add(event)`` appends events as they arrive (live or replay). Each step becomes a diff
``[(pos, old, new), ...]`` against the canvas, so ``seek(k)`` moves the view forward or back by
applying or reverting diffs: O(tokens changed), which keeps replay far above 50 steps/s.
Cursor ``k`` is "after k steps": 0 is the all-mask canvas, ``len(steps)`` the latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wdiff_cli.trace import RunEnd, RunStart, StepEvent, expand

# cell states, in legend order
PROMPT = "prompt"
DECODED = "decoded"  # decoded earlier, K/V cached (not computed this step)
RECOMPUTED = "recomputed"  # decoded earlier but computed again this step (post-decode transient)
COMMITTED = "committed"  # decoded this step
ACTIVE = "active"  # masked, computed this step
BUFFER = "buffer"  # masked, attended through the cache, not computed
FAR_FIELD = "far_field"  # masked, pruned (neither computed nor attended)
MASKED = "masked"  # masked, no position sets in the trace (before step 1, or a counts-level trace)
STATES = (PROMPT, DECODED, RECOMPUTED, COMMITTED, ACTIVE, BUFFER, FAR_FIELD, MASKED)


@dataclass
class StepView:
    """One step as seen by the watched row: position sets as spans (expanded only for the view)."""

    committed: list  # [[pos, token_id, confidence], ...]
    computed: list | None  # None: the trace has no position sets (level "counts")
    buffer: list
    far_field: list
    masks_left: int | None
    filled: list | None = None  # [start, stop, token_id]: an early stop overwrote these positions


def _step_view(ev: StepEvent, row: int) -> StepView:
    r = ev.rows[row] if row < len(ev.rows) else {}
    return StepView(committed=r.get("committed", []), computed=r.get("computed"), buffer=r.get("buffer", []),
                    far_field=r.get("far_field", []), masks_left=r.get("masks_left"), filled=r.get("filled"))


@dataclass
class RunState:
    row: int = 0
    start: RunStart | None = None
    steps: list = field(default_factory=list)
    end: RunEnd | None = None
    error: str | None = None
    diffs: list = field(default_factory=list)  # per step: [(pos, old, new), ...]
    views: list = field(default_factory=list)  # per step: StepView
    seconds_sum: list = field(default_factory=lambda: [0.0])  # prefix sums over steps
    flops_sum: list = field(default_factory=lambda: [0])
    vflops_sum: list = field(default_factory=lambda: [0])
    refresh_steps: list = field(default_factory=list)  # indices of refresh/full steps
    cursor: int = 0
    head: list = field(default_factory=list)  # canvas after every received step
    view: list = field(default_factory=list)  # canvas after ``cursor`` steps
    _states: list = field(default_factory=list, repr=False)
    _states_key: tuple | None = field(default=None, repr=False)

    # ---- ingestion
    def add(self, ev) -> None:
        if isinstance(ev, RunStart):
            if self.row >= len(ev.prompt_token_ids):
                raise ValueError(f"row {self.row} out of range: the run has {len(ev.prompt_token_ids)} row(s)")
            self.start = ev
            ids = list(ev.prompt_token_ids[self.row]) + [ev.mask_id] * ev.gen_length
            self.head = list(ids)
            self.view = list(ids)
        elif isinstance(ev, StepEvent):
            if self.start is None:
                raise ValueError("step event before run_start")
            view = _step_view(ev, self.row)
            diff = []
            for pos, tok, _conf in view.committed:
                diff.append((pos, self.head[pos], tok))
                self.head[pos] = tok
            if view.filled:
                lo_f, hi_f, tok_f = view.filled
                for p in range(lo_f, hi_f):
                    if self.head[p] != tok_f:
                        diff.append((p, self.head[p], tok_f))
                        self.head[p] = tok_f
            self.steps.append(ev)
            self.views.append(view)
            self.diffs.append(diff)
            self.seconds_sum.append(self.seconds_sum[-1] + ev.seconds)
            self.flops_sum.append(self.flops_sum[-1] + ev.flops)
            self.vflops_sum.append(self.vflops_sum[-1] + ev.vanilla_flops)
            if ev.kind in ("refresh", "full"):
                self.refresh_steps.append(len(self.steps) - 1)
        elif isinstance(ev, RunEnd):
            self.end = ev
            # reconcile with the final ids: writes that no step recorded land on the last step
            if self.start is not None and self.steps and self.row < len(ev.token_ids):
                lo = self.prompt_len
                extra = []
                for i, tok in enumerate(ev.token_ids[self.row]):
                    if self.head[lo + i] != tok:
                        extra.append((lo + i, self.head[lo + i], tok))
                        self.head[lo + i] = tok
                if extra:
                    self.diffs[-1] += extra
                    if self.cursor == len(self.steps):
                        for pos, _old, new in extra:
                            self.view[pos] = new

    # ---- properties
    @property
    def prompt_len(self) -> int:
        return len(self.start.prompt_token_ids[self.row]) if self.start else 0

    @property
    def length(self) -> int:
        return len(self.head)

    @property
    def received(self) -> int:
        return len(self.steps)

    @property
    def expected_steps(self) -> int:
        """Steps of the whole run: exact once it ended, else the planned number."""
        if self.end is not None or self.start is None:
            return len(self.steps)
        planned = self.start.settings.get("steps") or self.start.gen_length
        return max(planned, len(self.steps))

    @property
    def done(self) -> bool:
        return self.end is not None or self.error is not None

    # ---- the view
    def seek(self, k: int) -> int:
        """Move the view to "after k steps" (clamped to what was received); returns the cursor."""
        k = max(0, min(k, len(self.steps)))
        while self.cursor < k:
            for pos, _old, new in self.diffs[self.cursor]:
                self.view[pos] = new
            self.cursor += 1
        while self.cursor > k:
            self.cursor -= 1
            for pos, old, _new in reversed(self.diffs[self.cursor]):
                self.view[pos] = old
        return self.cursor

    def current(self) -> StepEvent | None:
        return self.steps[self.cursor - 1] if self.cursor > 0 else None

    def current_view(self) -> StepView | None:
        return self.views[self.cursor - 1] if self.cursor > 0 else None

    def states(self) -> list[str]:
        """The state of every canvas position at the cursor."""
        key = (self.cursor, len(self.steps), self.end is not None)
        if self._states_key != key:
            self._states = self._compute_states()
            self._states_key = key
        return self._states

    def _compute_states(self) -> list[str]:
        n, lo = len(self.view), self.prompt_len
        mask = self.start.mask_id if self.start else None
        sv = self.current_view()
        out = [PROMPT] * lo + [MASKED] * (n - lo)
        new = {p for p, _t, _c in sv.committed} if sv else set()
        comp = set(expand(sv.computed)) if sv and sv.computed is not None else None
        buffer = set(expand(sv.buffer)) if sv else set()
        far = set(expand(sv.far_field)) if sv else set()
        for p in range(lo, n):
            if self.view[p] != mask:
                if p in new:
                    out[p] = COMMITTED
                elif comp is not None and p in comp:
                    out[p] = RECOMPUTED
                else:
                    out[p] = DECODED
            elif sv is not None and comp is not None:
                if p in comp:
                    out[p] = ACTIVE
                elif p in buffer:
                    out[p] = BUFFER
                elif p in far:
                    out[p] = FAR_FIELD
        return out

    def cell(self, pos: int) -> tuple[str, int | None]:
        """(state, token id or None when masked) of one position at the cursor."""
        st = self.states()[pos]
        tok = self.view[pos]
        return st, (None if self.start and tok == self.start.mask_id else tok)

    # ---- cumulative numbers at the cursor
    def seconds_so_far(self, k: int | None = None) -> float:
        return self.seconds_sum[self.cursor if k is None else k]

    def flop_ratio_so_far(self, k: int | None = None) -> float | None:
        k = self.cursor if k is None else k
        v = self.vflops_sum[k]
        return self.flops_sum[k] / v if v else None

    def vanilla_tokens(self) -> int:
        """Tokens a vanilla step computes: every row's prompt + generation."""
        if self.start is None:
            return 0
        return sum(len(p) + self.start.gen_length for p in self.start.prompt_token_ids)

    def events(self) -> list:
        out = [self.start] if self.start else []
        out += self.steps
        if self.end is not None:
            out.append(self.end)
        return out
