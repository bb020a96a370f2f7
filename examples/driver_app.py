"""A driver app, the whole of its part: post GPS pings as it drives (fire-and-forget,
retrying what the server asks it to), pick the job up, and complete it with a proof photo.

    python -m examples.driver_app --base http://127.0.0.1:18080 --token $DRIVER \\
        --job JOB_ID --photo proof.jpg

Only httpx and the published contract: `POST /v1/pings` (202; 429 and 503 carry
Retry-After, and a retry reuses the same ping ids, so nothing is stored twice),
`POST /v1/jobs/{id}/pickup`, `POST /v1/jobs/{id}/complete` (multipart, 202 with a task id),
`GET /v1/tasks/{id}` (the polling fallback)."""

import argparse
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

EARTH_M = 6_371_000.0


def east_of(lat: float, lon: float, metres: float) -> tuple[float, float]:
    return lat, lon + math.degrees(metres / (EARTH_M * math.cos(math.radians(lat))))


def send(
    client: httpx.Client, method: str, path: str, attempts: int = 5, **kw: Any
) -> httpx.Response:
    """One request, sent again (the same body) while the server says when to come back."""
    for _ in range(attempts):
        answer = client.request(method, path, **kw)
        if answer.status_code not in (429, 503):
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    return answer


def drive(client: httpx.Client, start: tuple[float, float], fixes: int, step_s: float = 5.0) -> int:
    """Posts `fixes` pings along a straight street at 10 m/s, one request each (a phone
    would batch what it buffered offline); returns how many were accepted."""
    accepted = 0
    began = datetime.now(UTC) - timedelta(seconds=step_s * fixes)
    for i in range(fixes):
        lat, lon = east_of(*start, 10.0 * step_s * i)
        ping = {
            "ping_id": str(uuid.uuid4()),  # made once: a retry sends the same id
            "ts": (began + timedelta(seconds=step_s * i)).isoformat(),
            "lat": lat,
            "lon": lon,
            "speed_mps": 10.0,
            "heading_deg": 90.0,
            "accuracy_m": 5.0,
        }
        answer = send(client, "POST", "/v1/pings", json={"pings": [ping]})
        answer.raise_for_status()
        accepted += int(answer.json()["accepted"])
    return accepted


def deliver(
    client: httpx.Client, job_id: str, photo: Path, timeout_s: float = 60
) -> dict[str, Any]:
    """Picks the job up, completes it with the photo, and waits for its task's outcome."""
    send(client, "POST", f"/v1/jobs/{job_id}/pickup").raise_for_status()
    key = str(uuid.uuid4())  # a retried completion is the same completion
    done = send(
        client,
        "POST",
        f"/v1/jobs/{job_id}/complete",
        files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
        headers={"Idempotency-Key": key},
    )
    done.raise_for_status()
    task_id = done.json()["task_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task: dict[str, Any] = send(client, "GET", f"/v1/tasks/{task_id}").json()
        if task["status"] != "pending":
            return task
        time.sleep(0.5)
    raise TimeoutError(f"task {task_id} still pending after {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the platform's public URL")
    parser.add_argument("--token", required=True, help="the driver's JWT")
    parser.add_argument("--job", required=True, help="the job assigned to the driver")
    parser.add_argument("--photo", required=True, type=Path, help="the proof photo (JPEG)")
    parser.add_argument("--fixes", type=int, default=6)
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.base, headers=headers, timeout=30) as client:
        print(f"accepted {drive(client, (12.9716, 77.5946), args.fixes)} pings")
        task = deliver(client, args.job, args.photo)
        print(f"proof {task['status']}: {task.get('error') or task.get('result')}")
        return 0 if task["status"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
