"""Results a PACS can hold: a DICOM Segmentation of a series' predicted lesions on its source pixels
and a TID 1500 Comprehensive 3D SR with the stroke probability, decision, lesion volumes and model
versions (highdicom builds and checks both).

They reference the source's real UIDs, so they belong inside the hospital and are only made on
request (``strokeray score --dicom-out/--dicom-store``). Their UIDs derive from the source series
and the models, so a re-run makes the same objects and a PACS stores each once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from strokeray import __version__
from strokeray.imaging.overlay import HEMORRHAGIC, ISCHEMIC

INFARCT = hd.sr.CodedConcept("55641003", "SCT", "Infarct")
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
STROKE = codes.SCT.CerebrovascularAccidentOrStroke
CT_HEAD = hd.sr.CodedConcept("24725-4", "LN", "CT Head")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
# (class in the predicted masks, segment label, segmented property type)
LESIONS = ((ISCHEMIC, "Ischemic lesion", INFARCT), (HEMORRHAGIC, "Hemorrhagic lesion", codes.SCT.Hemorrhage))
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9801, 9802  # high, so viewers list them after the source series


@dataclass(frozen=True)
class Provenance:
    """What made the results: it is in their content, and in their UIDs (new models, new objects)."""

    classifier: str  # bundle versions
    segmenter: str
    threshold: float

    def key(self) -> list[str]:
        return [self.classifier, self.segmenter, f"{self.threshold:.6f}", __version__]


@dataclass(frozen=True)
class ScoredSlice:
    header: Dataset  # the source instance (pixels not needed)
    probability: float
    classes: np.ndarray | None  # predicted classes on the source pixel grid (0/1/2); None: not segmented


@dataclass(frozen=True)
class SeriesFinding:
    """One scored series: what the SR reports."""

    probability: float  # the most suspicious slice's
    positive: bool
    most_suspicious: Dataset  # header of that slice
    volumes_ml: dict[int, float]  # lesion class -> mL (NaN: spacing or thickness unknown)


def result_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (pydicom's root, SHA-512 of them): the same result, the same UID."""
    return str(generate_uid(entropy_srcs=["strokeray", *parts]))


# Patient and study attributes a derived object copies from its source. They are Type 2 (present,
# possibly empty), but anonymisers and exporters drop them; the copy must not fail on that.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def as_source(ds: Dataset) -> Dataset:
    """A copy of a source header with the Type 2 attributes a SEG or SR copies present (empty when
    the source lacks them); nothing the source holds is changed."""
    out = Dataset()
    out.update(ds)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for keyword in TYPE2_COPIED:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _identity(kind: str, series: str, prov: Provenance, series_number: int) -> dict:
    """The new object's series and instance (UIDs from the source series and the models), and maker."""
    return {
        "series_instance_uid": result_uid(f"{kind}-series", series, *prov.key()),
        "series_number": series_number,
        "sop_instance_uid": result_uid(kind, series, *prov.key()),
        "instance_number": 1,
        "manufacturer": "strokeray",
    }


def _position(ds: Dataset) -> tuple:
    """Slice order along the series: position along the slice normal, else instance number."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return (0, float(np.dot(normal, np.asarray(ipp, float))))
    return (1, int(ds.get("InstanceNumber") or 0))


def series_segmentation(slices: list[ScoredSlice], prov: Provenance) -> hd.seg.Segmentation | None:
    """The SEG of a series' lesions (one binary segment per class present), frames on the source
    pixels of the slices that hold them; None when no slice holds a lesion."""
    held = sorted(
        (
            ScoredSlice(as_source(s.header), s.probability, s.classes)
            for s in slices
            if s.classes is not None and s.classes.any()
        ),
        key=lambda s: _position(s.header),
    )
    if not held:
        return None
    masks = [np.asarray(s.classes) for s in held]
    for s, m in zip(held, masks):
        shape = (int(s.header.Rows), int(s.header.Columns))
        if m.shape != shape:
            raise ValueError(f"a mask of {m.shape} for a {shape} slice")
    present = [lesion for lesion in LESIONS if any(bool((m == lesion[0]).any()) for m in masks)]
    stack = np.stack([np.stack([m == cls for cls, _, _ in present], axis=-1) for m in masks]).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="strokeray segmenter", family=codes.cid7162.ArtificialIntelligence, version=prov.segmenter or "none"
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=CATEGORY,
            segmented_property_type=code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Brain],
        )
        for i, (_, label, code) in enumerate(present)
    ]
    series = str(held[0].header.SeriesInstanceUID)
    return hd.seg.Segmentation(
        source_images=[s.header for s in held],
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **_identity("seg", series, prov, SEG_SERIES_NUMBER),
        manufacturer_model_name="strokeray stroke cascade",
        software_versions=__version__,
        device_serial_number="none",
        content_label="STROKERAY",
        content_description="Predicted stroke lesions (research use, not for diagnosis)",
    )


def series_report(
    finding: SeriesFinding, seg: hd.seg.Segmentation | None, prov: Provenance, evidence: list[Dataset]
) -> hd.sr.Comprehensive3DSR:
    """The series' TID 1500 measurement report: stroke probability and decision, and each lesion
    segment's volume referencing the SEG."""
    src = as_source(finding.most_suspicious)
    evidence = [as_source(ds) for ds in evidence]
    series = str(src.SeriesInstanceUID)
    classifier = hd.sr.AlgorithmIdentification(name="strokeray classifier", version=prov.classifier)
    groups: list = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=result_uid("tracking", series, "stroke", *prov.key()), identifier="stroke assessment"
            ),
            finding_type=STROKE,
            algorithm_id=classifier,
            measurements=[
                hd.sr.Measurement(name=codes.DCM.Probability, value=float(finding.probability), unit=NO_UNITS)
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=STROKE, value=codes.SCT.Present if finding.positive else codes.SCT.Absent
                )
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)],
        )
    ]
    if seg is not None:
        segmenter = hd.sr.AlgorithmIdentification(name="strokeray segmenter", version=prov.segmenter or "none")
        for item in seg.SegmentSequence:
            number = int(item.SegmentNumber)
            cls, label, code = next(lesion for lesion in LESIONS if lesion[1] == item.SegmentLabel)
            volume = finding.volumes_ml.get(cls, math.nan)
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=result_uid("tracking", series, label, *prov.key()), identifier=label
                    ),
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg.SOPClassUID,
                        sop_instance_uid=seg.SOPInstanceUID,
                        segment_number=number,
                        source_series=hd.sr.SourceSeriesForSegmentation(series),
                    ),
                    finding_type=code,
                    algorithm_id=segmenter,
                    # Volume needs pixel spacing and slice thickness; without them it is left out.
                    measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=volume, unit=MILLILITRE)]
                    if math.isfinite(volume)
                    else None,
                )
            )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", *prov.key()),
            name="strokeray",
            manufacturer_name="strokeray",
            model_name=__version__,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CT_HEAD,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence + ([seg] if seg is not None else []),
        content=report,
        **_identity("sr", series, prov, SR_SERIES_NUMBER),
        is_complete=True,
    )
