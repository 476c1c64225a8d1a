"""The analyzer: FLOPs per variant at N and, per merge point, what MaRI rewrote or why not."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from service.engine.pipeline import Reparameterized, reparameterize_all
from service.engine.report import consumer_flops
from service.engine.variants import Variant


@dataclass
class Analysis:
    n: int
    variants: dict[Variant, Reparameterized]

    def flops(self, variant: Variant) -> int | None:
        return self.variants[variant].flops(self.n)

    def uncounted(self, variant: Variant) -> list[str]:
        """Nodes whose FLOPs depend on data-dependent sizes (not in `flops`, which is then a lower bound)."""
        count = self.variants[variant].flop_count(self.n)
        return list(count.uncounted) if count is not None else []

    def to_dict(self) -> dict[str, Any]:
        """FLOPs per variant at n, and MaRI's engine report (`EngineReport.to_dict`) with the GEMM FLOPs of
        each rewritten consumer before and after the split."""
        vani = self.flops(Variant.VANI)
        mari = self.variants[Variant.MARI].report
        report = mari.to_dict()
        for concat, concat_data in zip(mari.concats, report["concats"]):
            for consumer, consumer_data in zip(concat.consumers, concat_data["consumers"]):
                if consumer.rewritten:
                    before, after = consumer_flops(concat, consumer, self.n)
                    consumer_data.update(flops_before=before, flops_after=after)
        return {
            "n": self.n,
            "flops": {variant.value: self._flops_row(variant, vani) for variant in self.variants},
            **{key: report[key] for key in ("user_inputs", "concats", "token_concats", "merges", "folded_slices")},
        }

    def _flops_row(self, variant: Variant, vani: int | None) -> dict[str, Any]:
        flops, uncounted, report = self.flops(variant), self.uncounted(variant), self.variants[variant].report
        return {
            "flops": flops,
            "ratio_vs_vani": vani / flops if vani and flops else None,
            "uncounted_nodes": len(uncounted),
            "uncounted": uncounted,
            "runs_as": report.variant.value,
            "fallback_reason": report.fallback_reason,
        }


def analyze(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    user_inputs: Collection[str],
    n: int = 1000,
    example_kwargs: Mapping[str, Any] | None = None,
) -> Analysis:
    return Analysis(n, reparameterize_all(model, example_inputs, user_inputs, tuple(Variant), example_kwargs))


def format_analysis(analysis: Analysis) -> str:
    """Human-readable report for `ranker analyze`."""
    data = analysis.to_dict()
    lines = [f"FLOPs per request at N = {data['n']} (user inputs: {', '.join(data['user_inputs'])})"]
    for name, row in data["flops"].items():
        flops = row["flops"]
        text = f"{flops / 1e6:12.1f} MFLOP" if flops is not None else "  (not counted)"
        ratio = f"  {row['ratio_vs_vani']:.2f}x fewer than VanI" if row["ratio_vs_vani"] and name != "vani" else ""
        note = f"  [runs as {row['runs_as']}: {row['fallback_reason']}]" if row["fallback_reason"] else ""
        if row.get("uncounted_nodes"):
            note += f"  (at least: {row['uncounted_nodes']} node(s) with data-dependent sizes not counted)"
        lines.append(f"  {name:5s} {text}{ratio}{note}")
    for concat in data["concats"]:
        lines.append(
            f"concat {concat['node']}: user width {concat['user_width']}, candidate width {concat['candidate_width']}"
        )
        for c in concat["consumers"]:
            if c["rewritten"]:
                lines.append(
                    f"  rewritten  {c['node']:24s} {c['op']:8s} out {c['out_features']:5d}  "
                    f"{c['flops_before'] / 1e6:9.1f} -> {c['flops_after'] / 1e6:9.1f} MFLOP"
                )
            else:
                lines.append(f"  kept       {c['node']:24s} {c['op']:8s} {c['reason']}")
    for t in data["token_concats"]:
        lines.append(
            f"token concat {t['node']} (axis {t['axis']}): {t['user_tokens']} user / "
            f"{t['candidate_tokens']} candidate tokens; "
            f"pushed through {', '.join(t['pushed_through']) or 'nothing'}"
        )
        for node, reason in t["stopped_at"]:
            lines.append(f"  stopped at {node}: {reason}")
    for m in data["merges"]:
        lines.append(f"merge {m['node']} ({m['op']}) reads user {', '.join(m['user_inputs'])}: {m['how']}")
    for f in data["folded_slices"]:
        lines.append(
            f"folded {f['node']} ({f['op']} of {f['concat']}, {len(f['columns'])} column(s)): "
            f"reads {', '.join(f['parts'])} [{f['side']}]"
        )
    return "\n".join(lines)
