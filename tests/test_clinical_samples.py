"""The sample writers in clinical_samples.py make files ecgdatakit reads back exactly.

Each file is saved as ``record.bin`` so the format must be told from its content. Read back:
the format, the lead labels in order, the sampling rate, every sample (in mV, within 1 uV) and
the patient's age and sex, with no warning from the reader (a bad SCP-ECG CRC would give one).
"""

from __future__ import annotations

import base64
import re
import warnings

import numpy as np
import pytest
from clinical_samples import (
    EIGHT,
    FS,
    TWELVE,
    synthetic_uv,
    write_hl7_aecg,
    write_philips_xml,
    write_scp_ecg,
)

ecgdatakit = pytest.importorskip("ecgdatakit")

CASES = [
    # id, writer, extra arguments, leads, age, sex, ecgdatakit's source_format
    ("aecg-12", write_hl7_aecg, {}, TWELVE, 63, "M", "hl7_aecg"),
    ("aecg-8", write_hl7_aecg, {}, EIGHT, 41, "F", "hl7_aecg"),
    ("scp-12", write_scp_ecg, {}, TWELVE, 63, "M", "scp_ecg"),
    ("scp-8", write_scp_ecg, {}, EIGHT, 41, "F", "scp_ecg"),
    ("philips-xli", write_philips_xml, {"compressed": True}, TWELVE, 57, "F", "sierra_xml"),
    ("philips-plain", write_philips_xml, {"compressed": False}, TWELVE, 72, "M", "sierra_xml"),
]


@pytest.mark.parametrize(("writer", "extra", "leads", "age", "sex", "source_format"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_written_file_reads_back(tmp_path, writer, extra, leads, age, sex, source_format):
    signal = synthetic_uv(leads)
    path = writer(tmp_path / "record.bin", signal, leads, FS, age=age, sex=sex, **extra)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = ecgdatakit.FileParser().parse(path)

    assert record.source_format == source_format
    assert [lead.label for lead in record.leads] == leads
    for lead, expected in zip(record.leads, signal, strict=True):
        assert lead.sampling_rate == FS
        assert lead.units == "mV"
        assert len(lead.samples) == signal.shape[1]
        np.testing.assert_allclose(lead.samples, expected / 1000, rtol=0, atol=1e-3,
                                   err_msg=lead.label)
    assert record.patient.age == age
    assert record.patient.sex == sex
    if source_format == "scp_ecg":
        assert record.raw_metadata["checksum_valid"] is True


def test_xli_stores_limb_leads_as_residuals(tmp_path):
    """Like a Philips cart, the XLI writer stores III, aVR, aVL, aVF as what I and II do not
    explain: near zero for a recording that obeys Einthoven's law. The reader's rebuilding of
    those leads is therefore exercised, not bypassed."""
    from ecgdatakit.parsing.codecs.xli import xli_decode

    signal = synthetic_uv(TWELVE)
    path = write_philips_xml(tmp_path / "record.xml", signal, TWELVE, FS)
    text = path.read_text(encoding="utf-8")
    assert 'compression="XLI"' in text and 'dataencoding="Base64"' in text
    payload = re.search(r"<parsedwaveforms[^>]*>([^<]+)</parsedwaveforms>", text).group(1)
    chunks = xli_decode(base64.b64decode(payload))
    assert len(chunks) == 12
    for k, name in enumerate(TWELVE):
        stored = chunks[k][: signal.shape[1]]
        if name in ("III", "aVR", "aVL", "aVF"):
            assert np.abs(stored).max() <= 1, name
        else:
            np.testing.assert_array_equal(stored, signal[k], err_msg=name)


def test_writers_refuse_what_the_format_cannot_hold(tmp_path):
    signal = synthetic_uv(EIGHT)
    with pytest.raises(ValueError, match="integer"):
        write_hl7_aecg(tmp_path / "a.xml", signal + 0.5, EIGHT, FS)
    with pytest.raises(ValueError, match="lead code"):
        write_scp_ecg(tmp_path / "a.scp", signal, EIGHT[:-1] + ["V7R"], FS)
    with pytest.raises(ValueError, match="16-bit"):
        write_philips_xml(tmp_path / "a.xml", signal * 100, EIGHT, FS)
