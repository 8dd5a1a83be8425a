"""A real PACS (Orthanc) as a source: listing by QIDO-RS, reading by WADO-RS, errors by kind."""

from __future__ import annotations

import time

import pytest

from strokeray.io.dicomweb import TIMEOUT_ENV, DicomwebUnavailable
from strokeray.io.dicomweb_fs import DicomwebFileSystem, with_filters
from strokeray.io.sources import SourceError, SourceUnavailable, list_inputs, read_bytes

from ..orthanc import start_orthanc


def test_every_instance_is_listed_under_a_pseudonym_and_read_byte_for_byte(pacs):
    listing = list_inputs(pacs.server.dicomweb)
    files = {p.read_bytes() for p in pacs.folder.iterdir()}
    assert len(listing.entries) == len(files) == 33 and not listing.problems
    assert all(read_bytes(e.uri) in files for e in listing.entries)  # as stored: nothing transcoded
    assert len({read_bytes(e.uri) for e in listing.entries}) == 33
    names = " ".join(e.name for e in listing.entries)
    assert not any(uid in names for uid in pacs.uids)
    assert all(e.uri.startswith("dicomweb+http://127.0.0.1:") for e in listing.entries)


def test_filters_narrow_the_listing_to_studies(pacs):
    everything = list_inputs(pacs.server.dicomweb).entries
    study = everything[0].uri.split("/studies/")[1].split("/")[0]
    in_study = [e for e in everything if f"/studies/{study}/" in e.uri]
    assert [e.uri for e in list_inputs(with_filters(pacs.server.dicomweb, [study])).entries] == [
        e.uri for e in in_study
    ]
    assert [e.uri for e in list_inputs(f"{pacs.server.dicomweb}/studies/{study}").entries] == [e.uri for e in in_study]
    assert list_inputs(with_filters(pacs.server.dicomweb, modality="MR")).entries == []
    assert len(list_inputs(with_filters(pacs.server.dicomweb, modality="CT")).entries) == 33
    # The phantoms' study date is the synthesiser's; none is from the future.
    assert list_inputs(with_filters(pacs.server.dicomweb, since="29991231")).entries == []
    with pytest.raises(ValueError, match="YYYYMMDD"):
        with_filters(pacs.server.dicomweb, since="2026-01-01")
    with pytest.raises(ValueError, match="DICOMweb source"):
        with_filters("/data/archive", ["1.2.3"])


def test_a_deleted_instance_is_one_objects_problem(pacs):
    uri = list_inputs(pacs.server.dicomweb).entries[0].uri
    gone = uri.rsplit("/", 1)[0] + "/1.2.3.4.5.6.7.8.9"
    with pytest.raises(SourceError) as err:
        read_bytes(gone)
    assert err.value.reason == "unreadable" and "no such resource" in err.value.detail


def test_a_pacs_that_refuses_or_hangs_stops_the_run_instead_of_quarantining(tmp_path, monkeypatch):
    server = start_orthanc(tmp_path / "orthanc")
    url = server.dicomweb
    server.stop()
    with pytest.raises(DicomwebUnavailable, match="did not answer"):
        list_inputs(url)  # refused: not "no such input", and no empty listing
    with pytest.raises(SourceUnavailable):
        read_bytes(f"{url}/studies/1.2/series/3.4/instances/5.6")

    server = start_orthanc(tmp_path / "orthanc", port=server.port)
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    DicomwebFileSystem.clear_instance_cache()
    try:
        server.pause()
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match="did not answer"):
            read_bytes(f"{url}/studies/1.2/series/3.4/instances/5.6")
        assert time.monotonic() - t0 < 30  # bounded: a hung PACS never hangs a run
    finally:
        server.stop()
        DicomwebFileSystem.clear_instance_cache()
