"""The stack's container images (Dockerfiles beside this file), built by one command,
`telemetry images`, and cached: each image is tagged with a digest of its Dockerfile and
build inputs, and an image whose digest is already built is not built again.

The base is `debian:bookworm`. Where no image registry can be reached (our machines), it is
made locally, by debootstrap from the Debian mirror apt uses, and imported under that name,
so the Dockerfiles are the same on every host."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from infra import install, kafka, timescaledb
from infra.config import REPO_ROOT, StackConfig
from infra.containers import engine
from infra.install import ensure_debian_packages
from infra.procs import StackError, run

HERE = Path(__file__).resolve().parent
BASE = "docker.io/library/debian:bookworm"
REPOSITORY = "localhost/telemetry"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The project's files that go into the app image (as a wheel).
PROJECT_FILES = ("pyproject.toml", "README.md")
PROJECT_PACKAGES = (
    "schemas", "runtime", "jobs", "ingest", "streams", "api", "notifier", "photo_worker",
    "infra", "bench", "cli",
)  # fmt: skip

Report = Callable[[str], None]
# An image's build inputs besides its Dockerfile: path in the build context -> source.
Inputs = dict[str, Path]


@dataclass(frozen=True)
class Image:
    """A container image we build: its name, the files its build context needs, how the context
    is finished (the app's wheels), and the image of ours it is built FROM, if any."""

    name: str
    inputs: Callable[[StackConfig], Inputs] = lambda _: {}
    # Turns the staged inputs into the build context (the app: its wheels).
    finish_context: Callable[[Path], None] = lambda _: None
    # Its Dockerfile's FROM is this image's `latest`: built first, and part of the digest.
    base: str | None = None

    @property
    def dockerfile(self) -> Path:
        return HERE / self.name / "Dockerfile"


def reference(name: str, tag: str = "latest") -> str:
    return f"{REPOSITORY}/{name}:{tag}"


def _kafka_inputs(config: StackConfig) -> Inputs:
    install.ensure_kafka_jars(config)
    return {"lib": config.kafka_lib_dir, "log4j2.yaml": kafka.LOG4J_CONFIG}


def _postgres_inputs(config: StackConfig) -> Inputs:
    """TimescaleDB's source tarball (vendored or downloaded), checked, kept in the cache."""
    target = config.cache_dir / "images" / f"timescaledb-{timescaledb.VERSION}.tar.gz"
    if not target.exists():
        source = config.timescaledb_source or timescaledb.default_source()
        expected = config.timescaledb_sha256 or timescaledb.SOURCE_SHA256
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            fetched = timescaledb.fetch(source, Path(scratch))
            timescaledb.check_sha256(fetched, expected)
            shutil.copyfile(fetched, target.with_suffix(".part"))
            target.with_suffix(".part").replace(target)
    return {"timescaledb.tar.gz": target}


def _app_inputs(config: StackConfig) -> Inputs:
    # The versions this environment runs (and tests) with: the image installs exactly these.
    frozen = run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"])
    constraints = config.cache_dir / "images" / "app-constraints.txt"
    constraints.parent.mkdir(parents=True, exist_ok=True)
    if not constraints.exists() or constraints.read_text() != frozen:
        constraints.write_text(frozen)
    inputs = {f"src/{name}": REPO_ROOT / name for name in PROJECT_FILES}
    for package in PROJECT_PACKAGES:
        inputs[f"src/{package}"] = REPO_ROOT / package
    return inputs | {"constraints.txt": constraints}


def _app_wheels(context: Path) -> None:
    """The project and its dependencies as wheels, built here with this machine's pip (its
    index, its certificates), so the image build reaches no index."""
    run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet",
            "--wheel-dir", str(context / "wheels"),
            "--constraint", str(context / "constraints.txt"),
            str(context / "src"),
        ],
        timeout_s=1800,
    )  # fmt: skip
    shutil.rmtree(context / "src")


IMAGES = (
    Image("kafka", _kafka_inputs),
    Image("postgres", _postgres_inputs),
    Image("patroni", base="postgres"),
    Image("etcd"),
    Image("pgbouncer"),
    Image("redis"),
    Image("haproxy"),
    Image("nginx"),
    Image("prometheus"),
    Image("alertmanager"),
    Image("node-exporter"),
    Image("exporters"),
    Image("app", _app_inputs, _app_wheels),
)


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if not name.endswith(".pyc"):
                yield Path(root, name)


def digest(image: Image, inputs: Inputs, base_digest: str = "") -> str:
    """What the image is made of: its base's digest, its Dockerfile, and each input's paths
    and bytes."""
    h = hashlib.sha256(base_digest.encode())
    h.update(image.dockerfile.read_bytes())
    for target, source in sorted(inputs.items()):
        for path in _files(source):
            h.update(f"\0{target}/{path.relative_to(source)}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _stage(image: Image, inputs: Inputs, context: Path) -> None:
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    shutil.copy2(image.dockerfile, context / "Dockerfile")
    for target, source in inputs.items():
        for path in _files(source):
            dest = (
                context / target / path.relative_to(source) if source.is_dir() else context / target
            )
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    image.finish_context(context)


@dataclass(frozen=True)
class Builder:
    """The command that builds and keeps the images: Podman (ours), or Docker's."""

    program: str
    env: dict[str, str]

    def __call__(self, *args: str, timeout_s: float = 300) -> str:
        return run([self.program, *args], env=self.env, timeout_s=timeout_s)

    def has(self, reference: str) -> bool:
        try:
            self("image", "inspect", reference, timeout_s=60)
        except StackError:
            return False
        return True


def builder(config: StackConfig, program: str = "podman") -> Builder:
    if program == "docker":
        if shutil.which("docker") is None:
            raise StackError("docker is not on the PATH")
        return Builder("docker", {})
    engine.ensure_installed()
    return Builder(engine.PODMAN, engine.env(config))


def ensure_base(config: StackConfig, cli: Builder, report: Report) -> None:
    """`debian:bookworm`, pulled, or where no registry answers, made by debootstrap."""
    if cli.has(BASE):
        return
    try:
        cli("pull", "--quiet", BASE, timeout_s=600)
        return
    except StackError as exc:
        report(f"cannot pull {BASE} ({str(exc).splitlines()[-1]}); making it with debootstrap")
    ensure_debian_packages({"debootstrap": Path("/usr/sbin/debootstrap")})
    with tempfile.TemporaryDirectory(dir=config.cache_dir, prefix="debootstrap-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            timeout_s=1800,
        )
        # The same suites as Debian's own image: its point and security updates.
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
            f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: bookworm bookworm-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: http://deb.debian.org/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        for package in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            package.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                [cli.program, "import", "-", BASE],
                stdin=tar.stdout,
                env=dict(os.environ) | cli.env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        finally:
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise StackError(f"importing the debootstrap base failed: {imported.stderr}")
    report(f"made {BASE} with debootstrap from {DEBIAN_MIRROR}")


def build(
    config: StackConfig, report: Report, names: tuple[str, ...] = (), program: str = "podman"
) -> list[str]:
    """Builds every image (or those named) whose digest is not built yet, with Podman or
    Docker; returns the references it built. `latest` names the current digest's image."""
    unknown = set(names) - {image.name for image in IMAGES}
    if unknown:
        known = ", ".join(image.name for image in IMAGES)
        raise StackError(f"no image named {', '.join(sorted(unknown))}; the images are {known}")
    # An image named brings the images it is built from.
    wanted = set(names)
    for image in reversed(IMAGES):
        if image.name in wanted and image.base is not None:
            wanted.add(image.base)
    cli = builder(config, program)
    ensure_base(config, cli, report)
    built = []
    digests: dict[str, str] = {}
    for image in IMAGES:
        if names and image.name not in wanted:
            continue
        inputs = image.inputs(config)
        digests[image.name] = digest(image, inputs, digests[image.base] if image.base else "")
        tag = reference(image.name, digests[image.name])
        if not cli.has(tag):
            report(f"building {tag}")
            context = config.cache_dir / "images" / "context" / image.name
            _stage(image, inputs, context)
            # The host's network: apt reaches the mirror the way this machine does.
            cli("build", "--network", "host", "--tag", tag, str(context), timeout_s=3600)
            shutil.rmtree(context)
            built.append(tag)
        cli("tag", tag, reference(image.name))
    return built
