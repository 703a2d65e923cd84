"""DICOM SEG export of labels (napari_vldun.io.dicom_seg) on the real 3-slice CT series of dcmqi
(shared/data/dcmqi_ct: its liver / spine / heart masks), through the writer, Save results and predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from napari_vldun.io import read_image, read_label  # noqa: E402
from napari_vldun.io.dicom_seg import DicomSegError, SegExport, SegSource, write_dicom_seg  # noqa: E402

CLASSES = ["background", "liver", "spine", "heart", "kidney"]  # "kidney": a class without any voxel


@pytest.fixture(scope="module")
def ct(shared_data: Path) -> Path:
    folder = shared_data / "dcmqi_ct" / "ct-3slice"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def organ_labels(ct: Path, vol) -> np.ndarray:
    """1 liver, 2 spine, 3 heart: the dcmqi masks made on this series, on the volume's grid."""
    lab = np.zeros(vol.shape, np.uint8)
    for value, name in ((1, "liver"), (2, "spine"), (3, "heart")):
        lab[read_label(ct.parent / f"{name}_seg.nrrd", like=vol) > 0] = value
    return lab


def small_ct_series(src: Path, dst: Path, rows: slice = slice(200, 296), cols: slice = slice(150, 230)) -> Path:
    """A crop (96 x 80 by default) of the real series written as a new series in ``dst`` (same file names,
    same frame of reference; ImagePositionPatient moved to the crop's first pixel)."""
    dst.mkdir(parents=True)
    series = pydicom.uid.generate_uid()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        px = np.ascontiguousarray(ds.pixel_array[rows, cols])
        ipp = np.asarray(ds.ImagePositionPatient, float)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        ds.ImagePositionPatient = [float(v) for v in ipp + cols.start * dc * iop[:3] + rows.start * dr * iop[3:]]
        ds.Rows, ds.Columns = px.shape
        ds.PixelData = px.tobytes()
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f.name)
    return dst


def copy_series(src: Path, dst: Path) -> Path:
    """A writable copy of a (read-only) series folder."""
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm")):
        shutil.copyfile(f, dst / f.name)
    return dst


def frames_by_source(seg) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{source SOPInstanceUID: [(segment number, frame mask), ...]}`` read from the SEG's per-frame groups."""
    pixels = seg.pixel_array if seg.NumberOfFrames > 1 else seg.pixel_array[None]
    out: dict[str, list] = {}
    for frame, px in zip(seg.PerFrameFunctionalGroupsSequence, pixels):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out.setdefault(str(uid), []).append((number, np.asarray(px, bool)))
    return out


def referenced_instances(seg) -> list[str]:
    return [str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]


def test_reader_records_the_source_files_in_slice_order(ct: Path) -> None:
    vol = read_image(ct)
    files = vol.meta["source_files"]
    json.dumps([files, vol.meta["sop_instance_uids"]])  # JSON-serialisable
    # 01.dcm is the highest slice: data order (ascending along the normal) is 03, 02, 01
    assert [Path(f).name for f in files] == ["03.dcm", "02.dcm", "01.dcm"]
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert str(ds.SOPInstanceUID) == vol.meta["sop_instance_uids"][k]
        np.testing.assert_array_equal(vol.data[k], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert SegSource.from_meta(vol.meta, vol.shape).files == tuple(files)
    assert SegSource.from_meta(vol.meta, (2, 512, 512)) is None  # another grid: no SEG
    assert SegSource.from_meta({"format": "nifti"}, vol.shape) is None


def test_seg_of_the_real_organ_masks(ct: Path, tmp_path: Path) -> None:
    """Segmentation Storage, BINARY, one segment per class (named, the empty one kept), the source's patient /
    study / frame of reference, and every frame the mask of its own source instance, pixel for pixel."""
    vol = read_image(ct)
    lab = organ_labels(ct, vol)
    for flipped in (lab[::-1], lab[:, ::-1], lab[:, :, ::-1]):  # the masks tell every flip apart
        assert not np.array_equal(flipped, lab)
    out = write_dicom_seg(lab, vol.meta["source_files"], CLASSES, tmp_path / "labels.seg.dcm",
                          series_description="organs", algorithm_version="9.8.7", checkpoint="best.safetensors")
    assert out == tmp_path / "labels.seg.dcm" and sorted(p.name for p in tmp_path.iterdir()) == ["labels.seg.dcm"]
    seg = pydicom.dcmread(out)
    # the source instances in the masks' slice order (ascending z, as the NRRD masks were made), read here
    src = sorted((pydicom.dcmread(f) for f in ct.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == CLASSES[1:]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3, 4]
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID and seg.PatientID == src[0].PatientID
    assert seg.SeriesDescription == "organs" and seg.Manufacturer == "napari-vldun"
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (alg.AlgorithmName, alg.AlgorithmVersion, alg.AlgorithmSource) == (
        "napari-vldun", "9.8.7", "best.safetensors")
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert referenced_instances(seg) == [str(d.SOPInstanceUID) for d in src]
    frames = frames_by_source(seg)
    assert len(frames) == 3 and seg.NumberOfFrames == 9  # 3 slices x 3 present organs; "kidney" has none
    for k, ds in enumerate(src):
        got = frames[str(ds.SOPInstanceUID)]
        assert sorted(n for n, _ in got) == [1, 2, 3]
        for n, mask in got:
            np.testing.assert_array_equal(mask, lab[k] == n)
    by_uid = {str(d.SOPInstanceUID): d for d in src}
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame sits where its source instance is
        ds = by_uid[str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, ds.ImagePositionPatient)
    # highdicom reads it back to the same label map, per source instance
    back = hd.seg.Segmentation.from_dataset(seg)
    px = back.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in src], combine_segments=True)
    np.testing.assert_array_equal(px, lab)


def test_partial_result_references_only_the_computed_slices(ct: Path, tmp_path: Path) -> None:
    """Slices not computed are neither referenced nor encoded; a computed slice without labels is referenced
    with no frame."""
    vol = read_image(ct)
    lab = organ_labels(ct, vol)
    lab[2] = 0  # computed, nothing found
    uids = vol.meta["sop_instance_uids"]
    seg = pydicom.dcmread(write_dicom_seg(lab, vol.meta["source_files"], CLASSES, tmp_path / "p.seg.dcm",
                                          slices=[2, 0], series_description="partial", algorithm_version="1"))
    assert referenced_instances(seg) == [uids[0], uids[2]]
    frames = frames_by_source(seg)
    assert set(frames) == {uids[0]}  # slice 1 (labelled, not computed) and the empty slice 2: no frames
    for n, mask in frames[uids[0]]:
        np.testing.assert_array_equal(mask, lab[0] == n)
    with pytest.raises(DicomSegError, match="no computed slice"):
        write_dicom_seg(lab, vol.meta["source_files"], CLASSES, tmp_path / "e.seg.dcm", slices=[])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.seg.dcm"]


def test_single_file_2d(tmp_path: Path) -> None:
    """One .dcm file (an (H, W) image) gives a one-instance SEG; a value beyond the classes is named."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom test file CT_small.dcm not available")
    vol = read_image(path)
    lab = np.zeros(vol.shape, np.uint8)
    lab[10:30, 5:12], lab[90:100, 100:120] = 1, 2
    source = SegSource.from_meta(vol.meta, vol.shape)
    seg = pydicom.dcmread(write_dicom_seg(lab, source, ["background", "tumour"], tmp_path / "s.seg.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour", "label 2"]
    frames = frames_by_source(seg)[source.sop_instance_uids[0]]
    assert [n for n, _ in frames] == [1, 2]
    for n, mask in frames:
        np.testing.assert_array_equal(mask, lab == n)


def test_gone_changed_or_unfit_sources_are_clear_errors(ct: Path, tmp_path: Path) -> None:
    series = copy_series(ct, tmp_path / "series")
    vol = read_image(series)
    lab = organ_labels(ct, vol)
    source = SegSource.from_meta(vol.meta, vol.shape)
    with pytest.raises(DicomSegError, match="shape"):
        write_dicom_seg(lab[:2], source, CLASSES, tmp_path / "a.seg.dcm")
    with pytest.raises(DicomSegError, match="0..65535"):
        write_dicom_seg(lab.astype(np.int16) - 1, source, CLASSES, tmp_path / "a.seg.dcm")
    shutil.copyfile(series / "01.dcm", series / "02.dcm")  # another instance under that name
    with pytest.raises(DicomSegError, match="another instance"):
        write_dicom_seg(lab, source, CLASSES, tmp_path / "a.seg.dcm")
    (series / "02.dcm").unlink()
    with pytest.raises(DicomSegError, match=r"source DICOM series is gone \(1 of 3 files missing, e\.g\. .*02\.dcm"):
        write_dicom_seg(lab, source, CLASSES, tmp_path / "a.seg.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_save_results_adds_the_seg_and_refuses_gone_sources(ct: Path, tmp_path: Path) -> None:
    from napari_vldun.measure import save_results

    series = copy_series(ct, tmp_path / "series")
    vol = read_image(series)
    lab = organ_labels(ct, vol)
    export = SegExport(SegSource.from_meta(vol.meta, vol.shape), tuple(CLASSES), slices=(0, 1), checkpoint="w")
    paths = save_results(tmp_path / "out", "scan", summary={"input": "scan"}, labels=lab, like=vol, dicom_seg=export)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scan_labels.nii.gz", "scan_labels.seg.dcm", "scan_results.json"]
    assert json.loads(paths["summary"].read_text())["files"]["dicom_seg"] == str(paths["dicom_seg"])
    seg = pydicom.dcmread(paths["dicom_seg"])
    assert referenced_instances(seg) == list(vol.meta["sop_instance_uids"][:2])
    for k in (0, 1):
        for n, mask in frames_by_source(seg)[vol.meta["sop_instance_uids"][k]]:
            np.testing.assert_array_equal(mask, lab[k] == n)
    # not a DICOM input: no SEG, no error
    plain = save_results(tmp_path / "plain", "scan", summary={}, labels=lab)
    assert "dicom_seg" not in plain and not list((tmp_path / "plain").glob("*.dcm"))
    # the series is gone: refused before any work, nothing written
    shutil.rmtree(series)
    with pytest.raises(DicomSegError, match="source DICOM series is gone"):
        save_results(tmp_path / "again", "scan", summary={}, labels=lab, like=vol, dicom_seg=export)
    assert not (tmp_path / "again").exists()


def test_predict_on_a_dicom_folder_writes_the_seg(ct: Path, tmp_path: Path, capsys) -> None:
    """``vldun predict`` on a DICOM folder: labels.seg.dcm among the outputs, in metrics.json, each frame equal to
    labels.nii.gz on its source instance; ``--no-dicom-seg`` and a NIfTI input: no SEG."""
    import torch

    from napari_vldun.cli import main
    from napari_vldun.inference import LoadedModel
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint
    from napari_vldun.pipeline import predict_file

    series = small_ct_series(ct, tmp_path / "series")
    tiny = LoadedModel(build_model("tiny", seed=3).eval(), torch.device("cpu"), "tiny (test)", True)
    summary = predict_file(series, tmp_path / "out", loaded=tiny, progress=False, label_set="acdc")
    seg_path = tmp_path / "out" / "labels.seg.dcm"
    assert str(seg_path) in summary["outputs"] and summary["dicom_seg"]["file"] == str(seg_path)
    assert summary["dicom_seg"]["segments"] == ["RV cavity", "LV myocardium", "LV cavity"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dicom_seg"]["source_instances"] == 3
    vol = read_image(series)
    lab = read_label(tmp_path / "out" / "labels.nii.gz", like=vol)
    assert lab.any()
    seg = pydicom.dcmread(seg_path)
    assert seg.FrameOfReferenceUID == pydicom.dcmread(series / "01.dcm").FrameOfReferenceUID
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmSource == "tiny (test)"
    frames = frames_by_source(seg)
    assert set(frames) == {u for k, u in enumerate(vol.meta["sop_instance_uids"]) if lab[k].any()}
    for k, uid in enumerate(vol.meta["sop_instance_uids"]):
        for n, mask in frames.get(uid, []):
            np.testing.assert_array_equal(mask, lab[k] == n)
        assert {n for n, _ in frames.get(uid, [])} == set(np.unique(lab[k])) - {0}
    # the CLI prints it among the outputs; --no-dicom-seg leaves it out
    save_checkpoint(build_model("tiny", seed=3), tmp_path / "w")
    assert main(["predict", str(series), "--out", str(tmp_path / "cli"), "--weights", str(tmp_path / "w"),
                 "--device", "cpu", "--label-set", "acdc"]) == 0
    printed = json.loads(capsys.readouterr().out)
    cli_seg = tmp_path / "cli" / "labels.seg.dcm"
    assert str(cli_seg) in printed["outputs"] and cli_seg.is_file()
    assert main(["predict", str(series), "--out", str(tmp_path / "no"), "--weights", str(tmp_path / "w"),
                 "--device", "cpu", "--label-set", "acdc", "--no-dicom-seg"]) == 0
    assert json.loads(capsys.readouterr().out)["dicom_seg"] is None
    assert sorted(p.name for p in (tmp_path / "no").glob("*.*")) == [
        "labels.nii.gz", "metrics.json", "overview.png", "restored.nii.gz"]
    # a series a SEG cannot reference: refused before the network runs, with the way around it; nothing written
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    with pytest.raises(DicomSegError, match=r"no FrameOfReferenceUID.*--no-dicom-seg"):
        predict_file(series, tmp_path / "nofor", loaded=tiny, progress=False)
    assert not (tmp_path / "nofor").exists() or not list((tmp_path / "nofor").iterdir())
    nifti = predict_file(tmp_path / "out" / "restored.nii.gz", tmp_path / "nifti", loaded=tiny, progress=False)
    assert nifti["dicom_seg"] is None and not list((tmp_path / "nifti").glob("*.dcm"))
