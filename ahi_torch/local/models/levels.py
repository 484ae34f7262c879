"""Which metadata level (Patient, Study, Series, Instance) AHI puts each DICOM attribute in.

From AHI's metadata normalisation rules: Patient = Patient module, Issuer of Patient ID and
Patient Group macros, Clinical Trial Subject; Study = General Study, Patient Study, Clinical
Trial Study; Series = General Series, Clinical Trial Series, General Equipment, Frame of
Reference. Everything else, private tags included, is instance level.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

PATIENT = frozenset(
    [
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "TypeOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthDateInAlternativeCalendar",
        "PatientDeathDateInAlternativeCalendar",
        "PatientAlternativeCalendar",
        "PatientSex",
        "ReferencedPatientPhotoSequence",
        "QualityControlSubject",
        "ReferencedPatientSequence",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "EthnicGroup",
        "EthnicGroupCodeSequence",
        "PatientComments",
        "PatientSpeciesDescription",
        "PatientSpeciesCodeSequence",
        "PatientBreedDescription",
        "PatientBreedCodeSequence",
        "BreedRegistrationSequence",
        "StrainDescription",
        "StrainNomenclature",
        "StrainCodeSequence",
        "StrainAdditionalInformation",
        "StrainStockSequence",
        "GeneticModificationsSequence",
        "ResponsiblePerson",
        "ResponsiblePersonRole",
        "ResponsibleOrganization",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "SourcePatientGroupIdentificationSequence",
        "GroupOfPatientsIdentificationSequence",
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
        "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
        "ClinicalTrialProtocolEthicsCommitteeName",
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    ]
)

STUDY = frozenset(
    [
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "ReferringPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "ConsultingPhysicianIdentificationSequence",
        "StudyID",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyDescription",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence",
        "RequestingServiceCodeSequence",
        "ReferencedStudySequence",
        "ProcedureCodeSequence",
        "ReasonForPerformedProcedureCodeSequence",
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientSizeCodeSequence",
        "MeasuredAPDimension",
        "MeasuredLateralDimension",
        "MedicalAlerts",
        "Allergies",
        "SmokingStatus",
        "PregnancyStatus",
        "LastMenstrualDate",
        "PatientState",
        "Occupation",
        "AdditionalPatientHistory",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "ServiceEpisodeDescription",
        "IssuerOfServiceEpisodeIDSequence",
        "PatientSexNeutered",
        "ReasonForVisit",
        "ReasonForVisitCodeSequence",
        "ClinicalTrialTimePointID",
        "ClinicalTrialTimePointDescription",
        "LongitudinalTemporalOffsetFromEvent",
        "LongitudinalTemporalEventType",
        "ConsentForClinicalTrialUseSequence",
    ]
)

SERIES = frozenset(
    [
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "Laterality",
        "SeriesDate",
        "SeriesTime",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "ProtocolName",
        "SeriesDescription",
        "SeriesDescriptionCodeSequence",
        "OperatorsName",
        "OperatorIdentificationSequence",
        "ReferencedPerformedProcedureStepSequence",
        "RelatedSeriesSequence",
        "BodyPartExamined",
        "PatientPosition",
        "SmallestPixelValueInSeries",
        "LargestPixelValueInSeries",
        "RequestAttributesSequence",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "PerformedProcedureStepDescription",
        "PerformedProtocolCodeSequence",
        "CommentsOnThePerformedProcedureStep",
        "AnatomicalOrientationType",
        "ClinicalTrialCoordinatingCenterName",
        "ClinicalTrialSeriesID",
        "ClinicalTrialSeriesDescription",
        "Manufacturer",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "DeviceUID",
        "GantryID",
        "UDISequence",
        "SoftwareVersions",
        "SpatialResolution",
        "DateOfLastCalibration",
        "TimeOfLastCalibration",
        "PixelPaddingValue",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
    ]
)

#: Attributes AHI generates; UpdateImageSetMetadata may never change them.
GENERATED = frozenset(
    [
        "SchemaVersion",
        "DatastoreID",
        "ImageSetID",
        "PixelData",
        "Checksum",
        "Width",
        "Height",
        "MinPixelValue",
        "MaxPixelValue",
        "FrameSizeInBytes",
    ]
)

#: Attributes that UpdateImageSetMetadata changes only with ``force=true``.
FORCE_ONLY = frozenset(["PixelData", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"])

#: What decides whether new data matches an existing primary image set of its series (see
#: the local package docstring): a conflicting value sends the data to a non-primary image set.
IDENTITY = {
    "Patient": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"),
    "Study": ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"),
    "Series": ("SeriesInstanceUID", "Modality", "SeriesNumber"),
}


def level_of(keyword: str) -> str:
    """``"Patient"``, ``"Study"``, ``"Series"`` or ``"Instance"`` for an attribute key."""
    if keyword in PATIENT:
        return "Patient"
    if keyword in STUDY:
        return "Study"
    if keyword in SERIES:
        return "Series"
    return "Instance"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip(" \x00")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def identity_of(patient: Mapping[str, Any], study: Mapping[str, Any], series: Mapping[str, Any]) -> str:
    """A digest of the IDENTITY attributes: equal digests mean the data can share an image set."""
    by_level = {"Patient": patient, "Study": study, "Series": series}
    values = {level: [_clean(by_level[level].get(k)) for k in keywords] for level, keywords in IDENTITY.items()}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:32]
