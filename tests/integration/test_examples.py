"""The example apps (examples/) against the real stack, through the edge: the flow a client
developer follows, from the order to the proof photo, seen live by the customer app."""

import asyncio
import threading
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from examples import customer_app, driver_app
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role

pytestmark = pytest.mark.integration


def test_the_example_apps_take_a_delivery_from_order_to_proof(stack: Stack, tmp_path: Path) -> None:
    public = stack.public_url()
    assert public is not None
    tag = uuid.uuid4().hex[:6]

    def token(role: Role, sub: str) -> str:
        return issue_token(stack.config.jwt_private_key, sub=sub, role=role)

    customer = token(Role.CUSTOMER, f"cus-ex-{tag}")
    driver_id = f"drv-ex-{tag}"
    with httpx.Client(
        base_url=public, headers={"Authorization": f"Bearer {customer}"}, timeout=30
    ) as client:
        job = customer_app.order(client)
        assert job["share_page"].startswith(f"{public}/s/")
        seen: list[dict[str, Any]] = []
        follower = threading.Thread(
            target=lambda: asyncio.run(
                customer_app.follow(
                    public.replace("http", "ws", 1) + "/ws", customer, job["job_id"],
                    on_message=seen.append,
                )
            )
        )  # fmt: skip
        follower.start()
        dispatcher = {"Authorization": f"Bearer {token(Role.DISPATCHER, f'disp-ex-{tag}')}"}
        r = httpx.post(
            f"{public}/v1/jobs/{job['job_id']}/assign",
            json={"driver_id": driver_id},
            headers=dispatcher,
        )
        assert r.status_code == 200, r.text
        photo = tmp_path / "proof.jpg"
        image = BytesIO()
        Image.new("RGB", (640, 480), (40, 120, 200)).save(image, format="JPEG")
        photo.write_bytes(image.getvalue())
        argv = ["--base", public, "--token", token(Role.DRIVER, driver_id),
                "--job", job["job_id"], "--photo", str(photo), "--fixes", "4"]  # fmt: skip
        assert driver_app.main(argv) == 0
        follower.join(timeout=120)
        assert not follower.is_alive(), seen
        proof = client.get(f"/v1/jobs/{job['job_id']}/proof", params={"size": "thumb"})
        assert proof.status_code == 200 and proof.headers["content-type"] == "image/jpeg"
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "snapshot" and kinds[-1] == "job.completed", kinds
    seqs = [m["seq"] for m in seen if m["type"].startswith("job.")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # each once, in order
    statuses = [m["status"] for m in seen if m["type"] == "job.status"]
    assert "picked_up" in statuses
