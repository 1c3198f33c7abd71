"""Small DICOM and NIfTI files with known values, made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom(
    path: Path,
    hu: np.ndarray,
    intercept: float = -1024.0,
    slope: float = 1.0,
    photometric: str = "MONOCHROME2",
    z: float = 0.0,
    pixels: bool = True,
) -> Path:
    """A CT slice whose stored values are (hu - intercept) / slope, int16."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
    ds.PhotometricInterpretation = photometric
    if pixels:
        stored = np.round((hu - intercept) / slope).astype(np.int16)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 1
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path
