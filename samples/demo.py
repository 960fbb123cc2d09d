"""Helpers of samples/run-demo.sh (`make run`), run with the project's virtualenv (boto3, PyYAML):

  demo.py s3-config FILE HOST PORT  write FILE (mode 0600, sourceable) with the local S3 server's
                                    endpoint on HOST (PORT, or the one FILE names, or a free one) and
                                    root credentials, generated once and kept
  demo.py xattrs DIR                exit 0 when DIR takes user xattrs
  demo.py healthy FILE              exit 0 when the S3 server FILE names answers /health
  demo.py prepare FILE DATA_DIR     create the demo's buckets and upload DATA_DIR's files as inputs
  demo.py render NODE_ENV FILE DIR OUT
                                    write OUT/computeenvironment.yaml and OUT/workflow.yaml: the samples
                                    of DIR placed on the real node, their images the node's python image,
                                    their inputs the uploaded copies
  demo.py results FILE              print, for each Workflow of `kubectl get workflows -o json` (stdin),
                                    its published results and the first lines of each output
  demo.py get URL [FILE]            print one published object (a URL of status.results)

FILE is the credentials file (<cache>/demo/s3.env). Secrets are read from it, never from arguments.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("OCEAN_C2D_CACHE") or Path.home() / ".cache" / "ocean-c2d")
DEFAULT_CREDENTIALS = CACHE / "demo" / "s3.env"
OUTPUT_BUCKET = "ocean-c2d-demo-results"
INPUTS_BUCKET = "ocean-c2d-demo-inputs"
REGION = "us-east-1"
PREVIEW_LINES = 5


def read_env(path: Path) -> dict[str, str]:
    """A sourceable KEY=value file (values may be shell-quoted)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            words = shlex.split(value)
            values[key.removeprefix("export ").strip()] = words[0] if words else ""
    return values


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def s3_config(path: Path, host: str, wanted: int) -> None:
    """Write the credentials file: keys kept from an existing one, the endpoint on `host` at the port it
    named before (or `wanted`) when that is free, else at a free one. Called only when the server is
    not running, so a busy port belongs to someone else."""
    old = read_env(path) if path.exists() else {}
    previous = old.get("AWS_ENDPOINT_URL", "").rpartition(":")[2]
    candidates = [int(previous)] if previous.isdigit() else []
    port = next((p for p in [*candidates, wanted] if port_free(host, p)), None) or free_port(host)
    values = {
        "AWS_ACCESS_KEY_ID": old.get("AWS_ACCESS_KEY_ID") or "ocean-c2d-demo",
        "AWS_SECRET_ACCESS_KEY": old.get("AWS_SECRET_ACCESS_KEY") or secrets.token_urlsafe(30),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "OUTPUT_BUCKET": OUTPUT_BUCKET,
        "INPUTS_BUCKET": INPUTS_BUCKET,
    }
    text = "# The demo's local S3 server (samples/run-demo.sh): `set -a; . this-file; set +a`.\n"
    text += "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as sink:
        sink.write(text)
    os.chmod(temporary, 0o600)
    temporary.replace(path)


def xattrs_supported(directory: Path) -> bool:
    """Whether `directory` takes user xattrs (versitygw's posix backend keeps object metadata in them)."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.ocean-c2d", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def healthy(path: Path) -> bool:
    endpoint = read_env(path)["AWS_ENDPOINT_URL"]
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def client(values: dict[str, str]) -> Any:
    # Imported here: `healthy` runs in a loop and needs neither boto3 nor PyYAML.
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.session.Session().client(
        "s3",
        endpoint_url=values["AWS_ENDPOINT_URL"],
        aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
        region_name=values["AWS_REGION"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def prepare(path: Path, data: Path) -> None:
    values = read_env(path)
    s3 = client(values)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in (values["OUTPUT_BUCKET"], values["INPUTS_BUCKET"]):
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    for file in sorted(data.iterdir()):
        s3.put_object(Bucket=values["INPUTS_BUCKET"], Key=file.name, Body=file.read_bytes())


def render(node_env: Path, path: Path, samples: Path, out: Path) -> None:
    """The samples as the demo applies them: on the real node, with its images and the uploaded inputs."""
    import yaml

    node = read_env(node_env)
    inputs_bucket = read_env(path)["INPUTS_BUCKET"]
    label_key, _, label_value = node["REAL_NODE_LABEL"].partition("=")
    taint, _, effect = node["REAL_NODE_TAINT"].rpartition(":")
    taint_key, _, taint_value = taint.partition("=")
    image, _, tag = node["PYTHON_IMAGE"].rpartition(":")

    [environment] = yaml.safe_load_all((samples / "computeenvironment.yaml").read_text())
    environment["spec"] |= {
        "nodeSelector": {label_key: label_value},
        "tolerations": [{"key": taint_key, "operator": "Equal", "value": taint_value, "effect": effect}],
        "storageClassName": node["REAL_NODE_STORAGE_CLASS"],
    }
    workflows = list(yaml.safe_load_all((samples / "workflow.yaml").read_text()))
    for workflow in workflows:
        spec = workflow["spec"]
        spec["inputs"] = [
            {**item, "url": f"s3://{inputs_bucket}/{item['url'].rsplit('/', 1)[1]}"}
            for item in spec.get("inputs", [])
        ]
        spec["algorithm"]["container"] |= {"image": image, "tag": tag}

    class Dumper(yaml.SafeDumper):
        """Multi-line strings (the rawCode) as literal blocks, as in the samples."""

    def string(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)

    Dumper.add_representer(str, string)
    out.mkdir(parents=True, exist_ok=True)
    header = "# samples/{} as samples/run-demo.sh applies it on the local cluster's real node.\n"
    environment_text = yaml.dump(environment, Dumper=Dumper, sort_keys=False, width=110)
    workflows_text = yaml.dump_all(workflows, Dumper=Dumper, sort_keys=False, width=110)
    (out / "computeenvironment.yaml").write_text(header.format("computeenvironment.yaml") + environment_text)
    (out / "workflow.yaml").write_text(header.format("workflow.yaml") + workflows_text)


def object_key(values: dict[str, str], url: str) -> str:
    prefix = f"{values['AWS_ENDPOINT_URL']}/{values['OUTPUT_BUCKET']}/"
    if not url.startswith(prefix):
        raise SystemExit(f"demo: {url} is not in the demo's bucket ({prefix})")
    return url.removeprefix(prefix)


def get(values: dict[str, str], url: str) -> bytes:
    response = client(values).get_object(Bucket=values["OUTPUT_BUCKET"], Key=object_key(values, url))
    body: bytes = response["Body"].read()
    return body


def results(path: Path, listing: dict[str, Any]) -> None:
    values = read_env(path)
    for workflow in sorted(listing.get("items", []), key=lambda w: w["metadata"]["name"]):
        status = workflow.get("status") or {}
        found = status.get("results") or []
        print(
            f"demo: {workflow['metadata']['name']}: {status.get('statusText')} ({status.get('statusCode')}),"
            f" {len(found)} files published"
        )
        if status.get("resultsManifest"):
            print(f"  manifest      {status['resultsManifest']}")
        for result in found:
            print(f"  {result['type']:<15} {result['url']}")
            if result["type"] == "output":
                text = get(values, result["url"]).decode(errors="replace")
                for line in text.splitlines()[:PREVIEW_LINES]:
                    print(f"  {'':<15} | {line}")


def main(argv: list[str]) -> int:
    command, *args = argv or ["help"]
    if command == "s3-config" and len(args) == 3:
        s3_config(Path(args[0]), args[1], int(args[2]))
    elif command == "xattrs" and len(args) == 1:
        return 0 if xattrs_supported(Path(args[0])) else 1
    elif command == "healthy" and len(args) == 1:
        return 0 if healthy(Path(args[0])) else 1
    elif command == "prepare" and len(args) == 2:
        prepare(Path(args[0]), Path(args[1]))
    elif command == "render" and len(args) == 4:
        render(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]))
    elif command == "results" and len(args) == 1:
        results(Path(args[0]), json.load(sys.stdin))
    elif command == "get" and len(args) in (1, 2):
        values = read_env(Path(args[1]) if len(args) == 2 else DEFAULT_CREDENTIALS)
        sys.stdout.buffer.write(get(values, args[0]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
