"""Tiny raw-layout trees of each benchmark, written by the tests, with the quirks the readers must handle;
and small `digits` shard sets made the way a user makes them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fastmlic.datasets.voc2007 import CLASSES as VOC_CLASSES


def image_bytes(rng: np.random.Generator, size=(40, 30), mode="RGB", fmt="JPEG", **save) -> bytes:
    """A random-content image of `size` (w, h) in `mode`, encoded as `fmt`."""
    w, h = size
    channels = {"RGB": 3, "L": 1, "CMYK": 4, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    im = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def corrupt_jpeg(rng: np.random.Generator) -> bytes:
    data = image_bytes(rng, (64, 48))
    return data[: len(data) // 2]  # truncated: no EOI, half the scan missing


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _voc_xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation><size><width>40</width><height>30</height></size>{body}</annotation>"


def make_voc(root: Path, rng: np.random.Generator) -> dict:
    """VOCdevkit/VOC2007 with: a difficult-only class, a mixed class, a PNG saved as .jpg, a corrupt JPEG."""
    voc = root / "VOC2007"
    images = {
        "000001": ([("dog", 0), ("person", 0)], image_bytes(rng)),
        "000002": ([("cat", 0), ("chair", 1)], image_bytes(rng)),  # chair only difficult -> ignore
        "000003": ([("car", 1), ("car", 0)], image_bytes(rng, fmt="PNG")),  # car positive (one easy)
        "000004": ([("bird", 0)], corrupt_jpeg(rng)),
        "000005": ([("tvmonitor", 1)], image_bytes(rng)),  # nothing positive, tvmonitor ignored
    }
    for image_id, (objects, data) in images.items():
        write(voc / "Annotations" / f"{image_id}.xml", _voc_xml(objects))
        write(voc / "JPEGImages" / f"{image_id}.jpg", data)
    write(voc / "ImageSets" / "Main" / "trainval.txt", "000001\n000002\n000003\n")
    write(voc / "ImageSets" / "Main" / "test.txt", "000004\n000005\n")
    return {"classes": VOC_CLASSES}


def _voc_box_xml(objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    """Objects with boxes (xmin, ymin, xmax, ymax) in a 40 x 30 image, as the VOC2012 devkit writes them."""
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects
    )
    return f"<annotation><size><width>40</width><height>30</height><depth>3</depth></size>{body}</annotation>"


def make_voc2012(root: Path, rng: np.random.Generator, train_aug: bool = True) -> dict:
    """VOCdevkit/VOC2012 with: a difficult-only class, a zero-area box (and one that is empty only after
    clamping to the image), a float coordinate, and Puzzle-CAM's train_aug list with CRLF line ends."""
    voc = root / "VOC2012"
    box = (2, 3, 20, 25)
    images = {
        "2007_000032": [("aeroplane", 0, box), ("person", 0, (5, 5, 12.5, 9))],
        "2008_000001": [("dog", 0, box), ("chair", 1, box)],  # chair only difficult
        "2008_000002": [("bird", 0, box), ("cat", 0, (7, 4, 7, 20)),  # cat: zero width -> dropped
                        ("sheep", 0, (45, 2, 60, 9))],  # sheep: outside the 40 px image, empty once clamped
        "2008_000003": [("car", 0, box)],
    }
    for image_id, objects in images.items():
        write(voc / "Annotations" / f"{image_id}.xml", _voc_box_xml(objects))
        write(voc / "JPEGImages" / f"{image_id}.jpg", image_bytes(rng))
    write(voc / "ImageSets" / "Main" / "train.txt", "2007_000032\n2008_000001\n")
    write(voc / "ImageSets" / "Main" / "val.txt", "2008_000002\n2008_000003\n")
    if train_aug:
        ids = "2007_000032\r\n2008_000001\r\n2008_000002\r\n"
        write(voc / "ImageSets" / "Segmentation" / "train_aug.txt", ids)
        write(voc / "ImageSets" / "Segmentation" / "val.txt", "2008_000003\n")  # disjoint from train_aug
    return {"classes": VOC_CLASSES}


def make_coco(root: Path, rng: np.random.Generator) -> dict:
    """COCO 2014 with category ids out of order and gaps, an unannotated image and a grayscale JPEG."""
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    for split, ids in (("train", [9, 25, 30, 42]), ("val", [7, 8])):
        images = [
            {"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "width": 40, "height": 30} for i in ids
        ]
        anns = []
        if split == "train":
            anns = [
                {"id": 1, "image_id": 9, "category_id": 18},
                {"id": 2, "image_id": 9, "category_id": 1},
                {"id": 3, "image_id": 25, "category_id": 3},
                {"id": 4, "image_id": 42, "category_id": 1},
                {"id": 5, "image_id": 42, "category_id": 1},
            ]  # image 30 has no annotations
        else:
            anns = [{"id": 6, "image_id": 7, "category_id": 3}, {"id": 7, "image_id": 8, "category_id": 18}]
        for im in images:
            gray = split == "train" and im["id"] == 25
            write(root / f"{split}2014" / im["file_name"], image_bytes(rng, mode="L" if gray else "RGB"))
        coco = {"images": images, "annotations": anns, "categories": categories}
        write(root / "annotations" / f"instances_{split}2014.json", json.dumps(coco))
    return {"classes": ["person", "car", "dog"]}


NUS_CONCEPTS = [f"concept{i:02d}" for i in range(81)]


def make_nuswide(root: Path, rng: np.random.Generator) -> dict:
    """NUS-WIDE with Windows paths in the lists, an unlabelled image and the official -1130179 value."""
    write(root / "Concepts81.txt", "\n".join(NUS_CONCEPTS) + "\n")
    splits = {
        "Train": ["actor\\0001_111.jpg", "lake\\0002_222.jpg", "lake\\0003_333.jpg"],
        "Test": ["sky\\0004_444.jpg", "sky\\0005_555.jpg"],
    }
    # positives per image (by concept index); lake\0003 has none; -1130179 sits in lake_Train line 2
    positives = {"Train": [{0, 5}, {34}, set()], "Test": [{55}, {55, 80}]}
    for title, paths in splits.items():
        write(root / "ImageList" / f"{title}Imagelist.txt", "\r\n".join(paths) + "\r\n")
        for c, concept in enumerate(NUS_CONCEPTS):
            column = ["1" if c in positives[title][i] else "0" for i in range(len(paths))]
            if title == "Train" and c == 34:
                column[2] = "-1130179"
            write(
                root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{title}.txt",
                "\n".join(column) + "\n",
            )
        for p in paths:
            write(root / "Flickr" / p.replace("\\", "/"), image_bytes(rng))
    return {"classes": NUS_CONCEPTS}


def make_vg500(root: Path, rng: np.random.Generator) -> dict:
    """VG500 with one training image in VG_100K_2 and class ids up to 499."""
    index = {"1.jpg": [0, 499], "2.jpg": [7], "3.jpg": [7, 12, 7], "4.jpg": [250]}
    write(root / "ssgrl_partition" / "train_list_500.txt", "1.jpg\n2.jpg\n3.jpg\n")
    write(root / "ssgrl_partition" / "test_list_500.txt", "4.jpg\n")
    write(root / "ssgrl_partition" / "vg_category_500_labels_index.json", json.dumps(index))
    for name in ("1.jpg", "3.jpg", "4.jpg"):
        write(root / "VG_100K" / name, image_bytes(rng))
    write(root / "VG_100K_2" / "2.jpg", image_bytes(rng))
    return {"classes": [str(i) for i in range(500)]}


OI_CLASSES = {"/m/01": "Cat", "/m/02": "Dog", "/m/03": "Tree", "/m/04": "Bow", "/m/05": "Bow",
              "/m/09": "Rare"}  # fmt: skip
OI_TRAINABLE = ["/m/02", "/m/01", "/m/04", "/m/05", "/m/03"]  # /m/09 is described, not trainable


def make_openimages(root: Path, rng: np.random.Generator) -> dict:
    """Open Images V6 files: trainable classes in a non-alphabetical order, two classes sharing a display
    name, a label of a non-trainable class, an image whose only label is non-trainable, training images
    in sub-folders (train/train_0/ and train_f/ beside it), a machine-label file."""
    header = "ImageID,Source,LabelName,Confidence\n"
    write(root / "oidv6-class-descriptions.csv",
          "LabelName,DisplayName\n" + "".join(f"{m},{n}\n" for m, n in OI_CLASSES.items()))  # fmt: skip
    write(root / "oidv6-classes-trainable.txt", "\n".join(OI_TRAINABLE) + "\n")
    write(root / "oidv6-train-annotations-human-imagelabels.csv", header + (
        "0000aa,verification,/m/01,1\n"
        "0000aa,verification,/m/02,0\n"
        "0000aa,crowdsource-verification,/m/09,1\n"  # not trainable: dropped, counted
        "0000bb,verification,/m/03,0\n"  # only a negative: kept
        "0000cc,verification,/m/09,1\n"  # nothing trainable: the image is dropped
        "0000dd,verification,/m/05,1\n"
        "0000dd,verification,/m/04,1\n"))  # fmt: skip
    write(root / "train-annotations-machine-imagelabels.csv", header + (
        "0000bb,machine,/m/02,0.9\n"  # becomes a positive with --machine-labels 0.5
        "0000bb,machine,/m/03,0.8\n"  # a human refuted it: stays negative
        "0000aa,machine,/m/04,0.3\n"))  # below 0.5
    write(root / "validation-annotations-human-imagelabels.csv", header + "0000ee,verification,/m/02,1\n")
    write(root / "test-annotations-human-imagelabels.csv", header + "0000ff,verification,/m/03,1\n")
    for name, folder in [("0000aa", "train/train_0"), ("0000bb", "train/train_0"), ("0000cc", "train_f"),
                         ("0000dd", "train_f"), ("0000ee", "validation"), ("0000ff", "test")]:  # fmt: skip
        write(root / folder / f"{name}.jpg", image_bytes(rng))
    return {"classes": ["Dog", "Cat", "Bow (/m/04)", "Bow (/m/05)", "Tree"]}


def digits_shards(out: Path, train: int, val: int, size: int) -> Path:
    """`digits` shards made by tools/make_shards.py, as a user would make them."""
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "tools" / "make_shards.py"),
            "--data",
            "digits",
            "--out",
            str(out),
            "--digits-train",
            str(train),
            "--digits-val",
            str(val),
            "--digits-size",
            str(size),
            "--shard-size",
            "128",
        ],
        check=True,
        capture_output=True,
    )
    return out
