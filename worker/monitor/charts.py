"""Small server-side SVG charts for the dashboard: no JavaScript, nothing the CSP must allow.

Colours and sizes are SVG presentation attributes (not ``style``), which ``style-src 'self'``
permits; every text is escaped. A chart is a fixed-size ``<svg>`` with a ``<title>`` for
screen readers and the data in ``data-`` attributes, so a test reads back what was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 360, 110
LEFT, RIGHT, TOP, BOTTOM = 44, 6, 8, 18
BAR = "#4a7fb5"
FAILED = "#c0392b"
MEDIAN = "#2e8b57"
P95 = "#d4851b"


def _axis(top_value: str, hours: int) -> str:
    """The y axis's top label, the baseline and the x axis's ends (hours ago)."""
    base = HEIGHT - BOTTOM
    return (
        f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#888"/>'
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end" font-size="10">{top_value}</text>'
        f'<text x="{LEFT - 4}" y="{base}" text-anchor="end" font-size="10">0</text>'
        f'<text x="{LEFT}" y="{HEIGHT - 4}" font-size="10">-{hours} h</text>'
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end" font-size="10">now</text>'
    )


def _nice_max(value: float) -> float:
    """A round top for the y axis at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return value


#: Tops of a latency axis: durations a reader takes in at once.
_NICE_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def _nice_seconds(value: float) -> float:
    for top in _NICE_SECONDS:
        if value <= top:
            return float(top)
    return _nice_max(value / 3600) * 3600


def _svg(kind: str, title: str, body: str, data: str) -> Markup:
    return Markup(
        f'<svg class="chart" data-chart="{kind}" {data} width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )


def jobs_per_hour_chart(title: str, finished: Sequence[int], failed: Sequence[int]) -> Markup:
    """Bars of jobs finished per hour, the failed part of each bar in red."""
    hours = len(finished)
    top = _nice_max(max(finished, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(hours, 1)
    bars = []
    for i, (n, bad) in enumerate(zip(finished, failed, strict=True)):
        if n <= 0:
            continue
        x = LEFT + i * slot + 1
        h = plot_h * n / top
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot - 2:.1f}" '
            f'height="{h:.1f}" fill="{BAR}"><title>{n} jobs ({bad} failed)</title></rect>'
        )
        if bad:
            fh = plot_h * bad / top
            bars.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - fh:.1f}" width="{slot - 2:.1f}" '
                f'height="{fh:.1f}" fill="{FAILED}"/>'
            )
    data = f'data-total="{sum(finished)}" data-bars="{len([n for n in finished if n > 0])}"'
    return _svg("jobs", title, _axis(f"{top:g}", hours) + "".join(bars), data)


def _seconds_label(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:g} h"
    if value >= 60:
        return f"{value / 60:g} min"
    return f"{value:g} s"  # the axis tops are whole seconds, minutes or hours


def latency_chart(
    title: str, median: Sequence[float | None], p95: Sequence[float | None]
) -> Markup:
    """Median (solid) and p95 (dashed) queue-to-result latency per hour, gaps where no job."""
    hours = len(median)
    values = [v for v in (*median, *p95) if v is not None]
    top = _nice_seconds(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(hours, 1)

    def path(series: Sequence[float | None], colour: str, dash: str, name: str) -> str:
        """A polyline per run of hours with jobs (no line across an hour without one)."""
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(series):
            if v is None:
                runs.append([])
                continue
            runs[-1].append((LEFT + (i + 0.5) * slot, TOP + plot_h - plot_h * v / top))
        out = []
        for points in (r for r in runs if r):
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(
                f'<polyline class="{name}" points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="1.5"{dash}/>'
            )
            out.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>' for x, y in points
            )
        return "".join(out)

    body = (
        _axis(_seconds_label(top), hours)
        + path(p95, P95, ' stroke-dasharray="4 2"', "p95")
        + path(median, MEDIAN, "", "median")
    )
    data = f'data-points="{len([v for v in median if v is not None])}"'
    return _svg("latency", title, body, data)
