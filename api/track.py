"""A job's track as GeoJSON, pure: the driver's valid fixes in the job's window, simplified
(Douglas-Peucker, shapely) so a day-long track stays a few thousand points at most."""

from datetime import datetime
from typing import Any

from shapely import LineString

# About 5 m at our latitudes: below GPS accuracy, so nothing a map could show is lost.
TOLERANCE_DEG = 5e-5
MAX_POINTS = 2000

LonLat = tuple[float, float]


def simplify(points: list[LonLat], max_points: int = MAX_POINTS) -> list[LonLat]:
    """The line with fewer vertices, its ends kept; the tolerance doubles until the line
    fits in `max_points`."""
    if len(points) < 3:
        return points
    line = LineString(points)
    tolerance = TOLERANCE_DEG
    simple = line.simplify(tolerance, preserve_topology=False)
    while len(simple.coords) > max_points:
        tolerance *= 2
        simple = line.simplify(tolerance, preserve_topology=False)
    return [(float(x), float(y)) for x, y in simple.coords]


def feature(
    points: list[LonLat], properties: dict[str, Any], start: datetime, end: datetime
) -> dict[str, Any]:
    """A GeoJSON Feature; a LineString needs two positions, so fewer give a null geometry."""
    simple = simplify(points)
    geometry = (
        {"type": "LineString", "coordinates": [list(p) for p in simple]}
        if len(simple) >= 2
        else None
    )
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": properties
        | {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "fixes": len(points),
            "points": len(simple) if geometry else 0,
        },
    }
