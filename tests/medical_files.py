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
    study: str = "1.2.826.0.1.3680043.8.498.1",
    series: str = "1.2.826.0.1.3680043.8.498.1.1",
    modality: str = "CT",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "",
    instance: int = 1,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    compress: str | None = None,
) -> Path:
    """A CT slice whose stored values are (hu - intercept) / slope, int16; `compress`: 'rle' (pydicom's encoder) or
    'jpeg-lossless' (GDCM's, JPEG Lossless process 14 SV1, how hospitals export CT)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.ImageType = list(image_type)
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.PatientID, ds.PatientName = "anon", "Anonymous"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.SeriesNumber = int(series.rsplit(".", 1)[-1]) if series.rsplit(".", 1)[-1].isdigit() else 1
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
    ds.PhotometricInterpretation = photometric
    if pixels:
        stored = np.round((hu - intercept) / slope).astype(np.int16)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 1
        ds.PixelData = stored.tobytes()
    if compress == "rle":
        from pydicom.uid import RLELossless

        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    if compress == "jpeg-lossless":
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    return path


def chest_hu(size: int = 128, lungs: bool = True, covid: bool = False, seed: int = 0) -> np.ndarray:
    """A chest-like slice in HU: air (-1000) around a body (40 HU) on a table, two lungs (-850) when `lungs`,
    ground-glass patches (-350) when `covid`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    hu = np.full((size, size), -1000.0)
    hu[((xx - size / 2) / (size * 0.38)) ** 2 + ((yy - size * 0.48) / (size * 0.28)) ** 2 < 1] = 40
    hu[int(size * 0.82) : int(size * 0.85), 4:-4] = 300
    if lungs:
        for cx in (size * 0.35, size * 0.65):
            hu[((xx - cx) / (size * 0.11)) ** 2 + ((yy - size * 0.47) / (size * 0.18)) ** 2 < 1] = -850
        if covid:
            for _ in range(3):
                cx, cy = rng.uniform(0.28, 0.72) * size, rng.uniform(0.38, 0.56) * size
                hu[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.05 * size) ** 2] = -350
    return hu + rng.normal(0, 10, hu.shape)


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path


def deflated_dicom_bomb(path: Path, pixel_bytes: int, rows: int = 64, cols: int = 64) -> Path:
    """A DICOM file in the Deflated Explicit VR Little Endian transfer syntax whose pixel data is `pixel_bytes` zero
    bytes: a few hundred kB on disk that inflate to `pixel_bytes` (512 MB from 0.5 MB). Made streaming, a MB at a
    time, so that the test never holds what the bomb expands to."""
    import io
    import struct
    import zlib

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    small = write_dicom(path.with_suffix(".small"), np.zeros((rows, cols), np.float32))
    ds = pydicom.dcmread(small)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path.with_suffix(".deflated"), enforce_file_format=True)
    raw = path.with_suffix(".deflated").read_bytes()
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader.read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
    start = fp.tell()
    dataset = zlib.decompress(raw[start:], -zlib.MAX_WBITS)
    pixel_tag = dataset.rindex(b"\xe0\x7f\x10\x00OW")
    header = dataset[:pixel_tag] + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", pixel_bytes)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts, chunk = [deflate.compress(header)], bytes(1024 * 1024)
    for start_at in range(0, pixel_bytes, len(chunk)):
        parts.append(deflate.compress(chunk[: min(len(chunk), pixel_bytes - start_at)]))
    parts.append(deflate.flush())
    path.write_bytes(raw[:start] + b"".join(parts))
    for leftover in (path.with_suffix(".small"), path.with_suffix(".deflated")):
        leftover.unlink()
    return path
