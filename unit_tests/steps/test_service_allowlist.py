"""The operator's ALLOWED_METADATA_CACHES and ALLOWED_PROVIDERS (issue 11, C12): a Workflow's metadataUri
and the DDO's provider choose who would receive the operator's fresh download signature, so a server
outside the lists gets no request at all, and a DDO that is not the DID's is refused."""

from __future__ import annotations

from pathlib import Path

import httpx

from ocean_c2d.steps.contract import EXIT_DATA_PROVISIONING_FAILED, EXIT_OK
from unit_tests.steps.providers import Asset, OceanStack, Provider
from unit_tests.steps.test_configure import DATA_DID, RAW_CODE, allowing, did_input, make_job

OTHER_DID = "did:op:" + "c3" * 32


async def test_a_provider_outside_the_allowlist_receives_no_request(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    """The DDO names the stack's provider, the operator lists another one: not a fileinfo, not a
    signed download, not even the root listing reaches the DDO's provider."""
    stack.add_asset(Asset(DATA_DID, [b"secret data"]))
    elsewhere = Provider(expected_consumer="0x" + "00" * 20)
    try:
        job = make_job(
            tmp_path,
            [did_input(Asset(DATA_DID, [b""]))],
            {"rawCode": RAW_CODE},
            metadata_uri=stack.metadata.url,
            providers=(elsewhere.url,),
        )
        assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED
    finally:
        elsewhere.close()

    assert stack.provider.requests == []
    assert stack.provider.downloads == []
    assert job.message()["message"] == (
        f"input 0 ({DATA_DID}): the DDO's provider is not one the operator allows (ALLOWED_PROVIDERS; "
        "https only): nothing was sent to it"
    )
    assert stack.provider.url not in job.message()["message"]  # the DDO's text is not quoted


async def test_with_no_provider_listed_no_provider_is_allowed(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"secret data"]))
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, metadata_uri=stack.metadata.url)

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert stack.provider.requests == []
    assert "ALLOWED_PROVIDERS, empty: none is allowed" in job.message()["message"]


async def test_a_metadata_cache_outside_the_allowlist_is_never_asked(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"secret data"]))
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, **allowing(stack))
    job.env["ALLOWED_METADATA_CACHES"] = "https://aquarius.example"

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert stack.metadata.requests == []
    assert stack.provider.requests == []
    assert "(ALLOWED_METADATA_CACHES; https only)" in job.message()["message"]


async def test_an_https_entry_does_not_allow_the_same_host_over_http(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"secret data"]))
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, **allowing(stack))
    job.env["ALLOWED_PROVIDERS"] = stack.provider.url.replace("http://", "https://")

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED
    assert stack.provider.requests == []


async def test_a_ddo_whose_id_is_not_the_did_is_refused(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    """A metadata cache answering another asset's DDO (the attacker's own, naming its provider) for the
    DID the order paid for: refused before any provider is asked."""
    data = stack.add_asset(Asset(DATA_DID, [b"secret data"]))
    stack.metadata.ddos[DATA_DID] = {**stack.metadata.ddos[DATA_DID], "id": OTHER_DID}
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, **allowing(stack))

    assert await job.run(http) == EXIT_DATA_PROVISIONING_FAILED

    assert job.message()["message"] == (
        f"input 0 ({DATA_DID}): the metadata cache answered the DDO of another asset (its id is not the DID)"
    )
    assert stack.provider.requests == []


async def test_listed_services_work_as_before(
    tmp_path: Path, http: httpx.AsyncClient, stack: OceanStack
) -> None:
    data = stack.add_asset(Asset(DATA_DID, [b"secret data"]))
    job = make_job(tmp_path, [did_input(data)], {"rawCode": RAW_CODE}, **allowing(stack))

    assert await job.run(http) == EXIT_OK
    assert len(stack.provider.downloads) == 1
