"""The summary line: files/s for photos; frames, frames/s and the rgba videos' size for videos."""
from __future__ import annotations

from hx_infer.report import summary_line


def test_photos_give_files_per_second():
    report = {"counts": {"processed": 290, "skipped": 0, "failed": 2}, "wall_s": 7.1, "files_per_s": 40.8}
    assert summary_line(report, "OUT/hx-report.json") == (
        "hx-infer: 290 processed, 0 skipped, 2 failed in 7.1 s (40.8 files/s); report: OUT/hx-report.json")


def test_videos_give_frames_and_the_size_of_prores_cutouts():
    report = {"counts": {"processed": 1, "skipped": 0, "failed": 0}, "wall_s": 152.0, "files_per_s": 0.01,
              "frames": 795, "frames_per_s": 5.25, "rgba_video_bytes": 523_498_294, "video": {"rgba": "prores"}}
    assert summary_line(report, None) == (
        "hx-infer: 1 processed, 0 skipped, 0 failed in 152.0 s (795 video frames, 5.2 frames/s); "
        "rgba videos: 523.5 MB of ProRes 4444; --video-codec vp9 writes far smaller files")
    report |= {"rgba_video_bytes": 5_232_460, "video": {"rgba": "vp9"}}
    assert summary_line(report, None).endswith("rgba videos: 5.2 MB of VP9")


def test_photos_with_warnings_are_counted_only_when_there_are_some():
    report = {"counts": {"processed": 3, "skipped": 0, "failed": 0}, "wall_s": 1.0, "files_per_s": 3.0,
              "warnings": [{"path": "a.jpg", "reason": "12 stray bytes before the JPEG end marker"}]}
    assert summary_line(report, "OUT/hx-report.json") == (
        "hx-infer: 3 processed, 0 skipped, 0 failed in 1.0 s (3.0 files/s); 1 photo with a warning; "
        "report: OUT/hx-report.json")
    report["warnings"] *= 2
    assert "; 2 photos with warnings;" in summary_line(report, "OUT/hx-report.json")
    report["warnings"] = []
    assert "warning" not in summary_line(report, "OUT/hx-report.json")
