"""The container runtime's pure parts: paths mapped into the images, the image digests that
decide a rebuild, Podman's configuration, and the errors for bad input."""

import resource
import sys
from pathlib import Path

import pytest

from infra import kafka
from infra.config import REPO_ROOT, StackConfig
from infra.containers import engine, images
from infra.containers.run import (
    IMAGE_KAFKA_LIB,
    IMAGE_KAFKA_LOG4J,
    IMAGE_PYTHON,
    container_name,
    in_image,
)
from infra.procs import StackError


def test_host_paths_become_the_images_and_the_state_dir_stays(tmp_path: Path) -> None:
    # A state dir inside the repository (`make up`'s) is mounted at its own path: only the
    # interpreter, Kafka's jars and its logging config move.
    config = StackConfig(state_dir=REPO_ROOT / ".telemetry", cache_dir=tmp_path)
    assert in_image(config, sys.executable) == IMAGE_PYTHON
    assert in_image(config, f"{config.kafka_lib_dir}/*") == f"{IMAGE_KAFKA_LIB}/*"
    log4j = f"-Dlog4j2.configurationFile={kafka.LOG4J_CONFIG}"
    assert in_image(config, log4j) == f"-Dlog4j2.configurationFile={IMAGE_KAFKA_LOG4J}"
    data = str(config.state_dir / "kafka" / "data")
    assert in_image(config, data) == data


def test_container_names_differ_per_stack_and_process(tmp_path: Path) -> None:
    one = StackConfig(state_dir=tmp_path / "one")
    two = StackConfig(state_dir=tmp_path / "two")
    assert container_name(one, "kafka") != container_name(two, "kafka")
    assert container_name(one, "kafka") != container_name(one, "redis")
    assert container_name(one, "api-1") == container_name(one, "api-1")


def test_an_image_is_rebuilt_when_an_input_changes_and_only_then(tmp_path: Path) -> None:
    image = images.Image("kafka")  # its Dockerfile, with inputs of the test's own
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.jar").write_bytes(b"one")
    inputs = {"lib": lib}
    first = images.digest(image, inputs)
    assert images.digest(image, inputs) == first
    (lib / "a.jar").write_bytes(b"two")
    changed = images.digest(image, inputs)
    assert changed != first
    (lib / "a.jar").rename(lib / "b.jar")  # the same bytes under another name
    assert images.digest(image, inputs) not in (first, changed)


def test_compiled_files_do_not_count(tmp_path: Path) -> None:
    image = images.Image("app")
    src = tmp_path / "src"
    (src / "__pycache__").mkdir(parents=True)
    (src / "m.py").write_text("x = 1\n")
    before = images.digest(image, {"src": src})
    (src / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (src / "n.pyc").write_bytes(b"\0")
    assert images.digest(image, {"src": src}) == before


def test_every_image_has_its_dockerfile_from_debian_or_an_earlier_image() -> None:
    built: list[str] = []
    for image in images.IMAGES:
        text = image.dockerfile.read_text()
        if image.base is None:
            assert "FROM debian:bookworm" in text, image.name
        else:
            assert image.base in built, image.name
            assert f"FROM {images.reference(image.base)}" in text, image.name
        built.append(image.name)


def test_an_image_is_rebuilt_when_its_base_changes() -> None:
    image = next(i for i in images.IMAGES if i.base is not None)
    assert images.digest(image, {}, "one") != images.digest(image, {}, "two")


def test_an_unknown_image_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no image named nope; the images are kafka"):
        images.build(StackConfig(cache_dir=tmp_path), print, ("nope",))


def test_podman_gets_limits_it_may_set() -> None:
    conf = engine.render_conf()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert f'"nofile={nofile}:{nofile}"' in conf
    nproc = int(conf.split('"nproc=')[1].split(":")[0])
    assert 0 < nproc <= engine.MAX_NPROC
    assert 'runtime = "runc"' in conf and 'cgroup_manager = "cgroupfs"' in conf


def test_a_bad_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime"):
        StackConfig(runtime="docker-swarm")
