"""The readers on tiny raw trees: the conventions pinned in the README."""

import pytest
import rawdata

from fastmlic.datasets import (
    AnnotationError,
    digits,
    get_reader,
    mscoco,
    nuswide,
    openimages,
    vg500,
    voc2007,
    voc2012,
)


def by_key(listing):
    return {s.key: s for s in listing.samples}


def test_voc_difficult_only_is_ignore_and_one_easy_instance_is_positive(tmp_path, rng):
    rawdata.make_voc(tmp_path, rng)
    train = by_key(voc2007.list_split(tmp_path, "trainval"))
    C = voc2007.CLASSES
    assert train["000001"].positives == (C.index("dog"), C.index("person"))
    assert train["000002"].positives == (C.index("cat"),) and train["000002"].ignored == (C.index("chair"),)
    assert train["000003"].positives == (C.index("car"),) and train["000003"].ignored == ()
    test = voc2007.list_split(tmp_path / "VOC2007", "test")  # the VOC2007 folder itself works too
    assert test.has_ignore and by_key(test)["000005"].positives == ()


def test_voc_missing_annotation_fails_naming_the_file(tmp_path, rng):
    rawdata.make_voc(tmp_path, rng)
    (tmp_path / "VOC2007" / "Annotations" / "000002.xml").unlink()
    with pytest.raises(AnnotationError, match="000002.xml"):
        voc2007.list_split(tmp_path, "trainval")
    (tmp_path / "VOC2007" / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(AnnotationError, match=r"test\.txt: VOC2007 image list"):
        voc2007.list_split(tmp_path, "test")


def test_voc2012_difficult_empty_boxes_and_the_train_aug_list(tmp_path, rng):
    rawdata.make_voc2012(tmp_path, rng)
    C = voc2012.CLASSES
    train = by_key(voc2012.list_split(tmp_path, "train"))
    assert train["2007_000032"].positives == (C.index("aeroplane"), C.index("person"))  # "12.5" reads as 12
    assert train["2008_000001"].positives == (C.index("dog"),)
    assert train["2008_000001"].ignored == (C.index("chair"),)
    every = by_key(voc2012.list_split(tmp_path, "train", difficult="positive"))  # Puzzle-CAM's labels
    assert every["2008_000001"].positives == (C.index("chair"), C.index("dog"))
    assert not every["2008_000001"].ignored
    val = voc2012.list_split(tmp_path, "val")
    assert by_key(val)["2008_000002"].positives == (C.index("bird"),)  # cat: zero width; sheep: off the image
    assert "zero-area box left out (2 in this split)" in val.conventions
    assert voc2012.default_splits(tmp_path) == ("train", "val", "train_aug", "seg_val")
    assert [s.key for s in voc2012.list_split(tmp_path, "seg_val").samples] == ["2008_000003"]
    aug = voc2012.list_split(tmp_path / "VOC2012", "train_aug")  # CRLF ids; the VOC2012 folder itself works
    assert [s.key for s in aug.samples] == ["2007_000032", "2008_000001", "2008_000002"]


def test_voc2012_without_train_aug_writes_train_and_val_and_says_where_it_looked(tmp_path, rng):
    rawdata.make_voc2012(tmp_path, rng, train_aug=False)
    assert voc2012.default_splits(tmp_path) == ("train", "val")
    with pytest.raises(AnnotationError, match=r"Segmentation/train_aug.txt: the train_aug id list is not"):
        voc2012.list_split(tmp_path, "train_aug")
    ids = rawdata.write(tmp_path / "mine.txt", "2008_000003\n")
    assert voc2012.default_splits(tmp_path, train_aug_list=ids) == ("train", "val", "train_aug")
    listed = voc2012.list_split(tmp_path, "train_aug", train_aug_list=ids)
    assert [s.key for s in listed.samples] == ["2008_000003"]
    with pytest.raises(AnnotationError, match="nope.txt: --train-aug-list file not found"):
        voc2012.list_split(tmp_path, "train_aug", train_aug_list=tmp_path / "nope.txt")
    rawdata.write(tmp_path / "VOC2012" / "Annotations" / "2008_000003.xml",
                  "<annotation><object><name>car</name></object></annotation>")  # fmt: skip
    with pytest.raises(AnnotationError, match="2008_000003.xml: an object without bndbox"):
        voc2012.list_split(tmp_path, "val")


def test_coco_category_id_order_and_unannotated_images_dropped(tmp_path, rng):
    meta = rawdata.make_coco(tmp_path, rng)
    train = mscoco.list_split(tmp_path, "train")
    assert train.classes == meta["classes"]  # ids 1, 3, 18
    keys = by_key(train)
    assert set(keys) == {
        "COCO_train2014_000000000009",
        "COCO_train2014_000000000025",
        "COCO_train2014_000000000042",
    }
    assert train.dropped == {"no annotations": 1}
    assert keys["COCO_train2014_000000000009"].positives == (0, 2)
    assert keys["COCO_train2014_000000000042"].positives == (0,)  # two persons, one label


def test_coco_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match=r"instances_val2014\.json: COCO annotation file not found"):
        mscoco.list_split(tmp_path, "val")


def test_nuswide_conventions(tmp_path, rng):
    meta = rawdata.make_nuswide(tmp_path, rng)
    train = nuswide.list_split(tmp_path, "train")
    assert train.classes == meta["classes"]
    keys = by_key(train)
    assert set(keys) == {"actor_0001_111", "lake_0002_222"}  # lake\0003 has no label (-1130179 is not > 0)
    assert train.dropped == {"no label": 1}
    assert keys["actor_0001_111"].positives == (0, 5)
    assert keys["actor_0001_111"].image == tmp_path / "Flickr" / "actor" / "0001_111.jpg"


def test_nuswide_label_file_with_wrong_length(tmp_path, rng):
    rawdata.make_nuswide(tmp_path, rng)
    bad = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_concept07_Test.txt"
    bad.write_text("0\n")
    with pytest.raises(AnnotationError, match="Labels_concept07_Test.txt: 1 labels for 2 images"):
        nuswide.list_split(tmp_path, "test")


def test_vg500_finds_images_in_either_folder(tmp_path, rng):
    rawdata.make_vg500(tmp_path, rng)
    train = vg500.list_split(tmp_path, "train")
    assert len(train.classes) == 500
    keys = by_key(train)
    assert keys["2"].image == tmp_path / "VG_100K_2" / "2.jpg"
    assert keys["1"].positives == (0, 499) and keys["3"].positives == (7, 12)


def test_vg500_image_without_labels_is_an_error(tmp_path, rng):
    rawdata.make_vg500(tmp_path, rng)
    (tmp_path / "ssgrl_partition" / "test_list_500.txt").write_text("4.jpg\n99.jpg\n")
    with pytest.raises(AnnotationError, match="no labels for 1 images.*99.jpg"):
        vg500.list_split(tmp_path, "test")


def test_openimages_positives_negatives_unknowns_and_dropped_classes(tmp_path, rng):
    meta = rawdata.make_openimages(tmp_path, rng)
    train = openimages.list_split(tmp_path, "train")
    assert train.classes == meta["classes"]  # the trainable list's order; a shared name gets its MID
    assert train.has_ignore
    keys = by_key(train)
    assert set(keys) == {"0000aa", "0000bb", "0000dd"}
    assert train.dropped == {"labels of non-trainable classes": 2, "no trainable verified label": 1}
    aa, bb, dd = keys["0000aa"], keys["0000bb"], keys["0000dd"]
    assert (tuple(aa.positives), tuple(aa.negatives)) == ((1,), (0,))  # Cat positive, Dog verified negative
    assert (tuple(bb.positives), tuple(bb.negatives)) == ((), (4,))  # an image with only a negative stays
    assert tuple(dd.positives) == (2, 3)
    assert aa.image == tmp_path / "train" / "train_0" / "0000aa.jpg"  # sub-folders are searched
    assert dd.image == tmp_path / "train_f" / "0000dd.jpg"
    # unknown = neither verified positive nor verified negative: what .ign marks
    assert aa.ignore_row(5).tolist() == [0, 0, 1, 1, 1]
    assert bb.ignore_row(5).tolist() == [1, 1, 1, 1, 0]
    assert tuple(by_key(openimages.list_split(tmp_path, "test"))["0000ff"].positives) == (4,)


def test_openimages_machine_labels_only_when_asked_and_never_over_a_human_label(tmp_path, rng):
    rawdata.make_openimages(tmp_path, rng)
    with_machine = by_key(openimages.list_split(tmp_path, "train", machine_labels=0.5))
    assert (tuple(with_machine["0000bb"].positives), tuple(with_machine["0000bb"].negatives)) == ((0,), (4,))
    assert tuple(with_machine["0000aa"].positives) == (1,)  # 0.3 < 0.5


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("Confidence", "Score"), "no column Confidence in its header"),
    (lambda t: t + "0000zz,verification,/m/77,1\n", r":9: unknown class id '/m/77'"),
    (lambda t: t + "0000zz,verification,/m/01,0.5\n", r":9: human-verified Confidence '0.5'"),
    (lambda t: t + "0000zz,verification\n", r":9: 2 fields, the header has 4"),
])  # fmt: skip
def test_openimages_bad_label_file_is_named_with_its_line(tmp_path, rng, edit, message):
    rawdata.make_openimages(tmp_path, rng)
    labels = tmp_path / "oidv6-train-annotations-human-imagelabels.csv"
    labels.write_text(edit(labels.read_text()))
    with pytest.raises(AnnotationError, match=f"oidv6-train-annotations-human-imagelabels.csv.*{message}"):
        openimages.list_split(tmp_path, "train")


def test_openimages_trainable_class_without_description_is_named(tmp_path, rng):
    rawdata.make_openimages(tmp_path, rng)
    (tmp_path / "oidv6-classes-trainable.txt").write_text("/m/01\n/m/42\n")
    with pytest.raises(AnnotationError, match="oidv6-classes-trainable.txt:2: class /m/42 is not in"):
        openimages.list_split(tmp_path, "validation")


def test_digits_is_deterministic_multilabel_and_uses_disjoint_sources():
    a = digits.list_split(None, "train", seed=3, size=48, num_samples=200)
    b = digits.list_split(None, "train", seed=3, size=48, num_samples=200)
    assert [(s.key, s.image, s.positives) for s in a.samples] == [
        (s.key, s.image, s.positives) for s in b.samples
    ]
    counts = [len(s.positives) for s in a.samples]
    assert min(counts) == 1 and max(counts) == 4
    assert (
        digits.list_split(None, "train", seed=4, size=48, num_samples=5).samples[0].image
        != a.samples[0].image
    )
    pools = digits._source_pools(3)
    for d in range(10):
        train_rows = {r.tobytes() for r in pools["train"][d]}
        assert not any(r.tobytes() in train_rows for r in pools["val"][d])


def test_digits_partner_pairs_cooccur_more_than_others():
    listing = digits.list_split(None, "val", size=32, num_samples=1500)
    together = lambda a, b: sum(a in s.positives and b in s.positives for s in listing.samples)  # noqa: E731
    for d, partner in digits.PARTNER.items():
        others = [together(d, o) for o in range(10) if o not in (d, partner)]
        assert together(d, partner) > 2 * max(others)


def test_registry_rejects_unknown_dataset():
    known = r"--data='cifar10' is not a known dataset; known: digits, mscoco, nuswide, openimages"
    with pytest.raises(ValueError, match=known):
        get_reader("cifar10")
    with pytest.raises(ValueError, match=r"did you mean 'voc2007'"):
        get_reader("voc2070")
