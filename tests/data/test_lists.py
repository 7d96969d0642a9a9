"""List files: a CSV of one's own, and stand-ins with the layouts of Stanford Online Products,
In-Shop and CUB-200-2011 (generated here, same files and folders, a few tiny images)."""

import numpy as np
import pytest
import tensorflow as tf

from tfsim import config
from tfsim.data import lists, splits
from tfsim.errors import UserInputError
from tfsim.training.task import load_split


def png(seed, size=(10, 10)):
    rng = np.random.default_rng(seed)
    return tf.io.encode_png(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).numpy()


def write(path, data=None, text=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if data is not None else path.write_text(text)
    return path


@pytest.fixture
def sop(tmp_path):
    """Stanford_Online_Products/: Ebay_train.txt (classes 1-3), Ebay_test.txt (classes 4-5)."""
    root = tmp_path / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path\n"
    train, test, n = [header], [header], 0
    for class_id in range(1, 6):
        for k in range(3):
            n += 1
            rel = f"bicycle_final/{class_id}_{k}.JPG"
            write(root / rel, png(n))
            (train if class_id <= 3 else test).append(f"{n} {class_id} 1 {rel}\n")
    write(root / "Ebay_train.txt", text="".join(train))
    write(root / "Ebay_test.txt", text="".join(test))
    write(root / "Ebay_info.txt", text=header)
    return root


@pytest.fixture
def inshop(tmp_path):
    """In-shop Clothes Retrieval Benchmark/: Eval/list_eval_partition.txt, Img/img/WOMEN/..."""
    root = tmp_path / "In-shop Clothes Retrieval Benchmark"
    rows, n = [], 0
    for item, status in (("id_00000001", "train"), ("id_00000002", "train"), ("id_00000003", "train"),
                         ("id_00000004", "query"), ("id_00000004", "gallery"), ("id_00000005", "query"),
                         ("id_00000005", "gallery"), ("id_00000006", "gallery")):
        for view in ("front", "side"):
            n += 1
            rel = f"img/WOMEN/Dresses/{item}/{n:02d}_1_{view}.jpg"
            write(root / "Img" / rel, tf.io.encode_jpeg(np.full((12, 12, 3), n * 9, np.uint8)).numpy())
            rows.append(f"{rel}   {item}   {status}\n")
    write(root / "Eval" / "list_eval_partition.txt",
          text=f"{len(rows)}\nimage_name item_id evaluation_status\n" + "".join(rows))
    return root


@pytest.fixture
def cub(tmp_path):
    """CUB_200_2011/: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, images/."""
    root = tmp_path / "CUB_200_2011"
    images, labels, split, classes, n = [], [], [], [], 0
    for class_id in range(1, 5):
        folder = f"{class_id:03d}.Bird_{class_id}"
        classes.append(f"{class_id} {folder}\n")
        for k in range(4):
            n += 1
            write(root / "images" / folder / f"Bird_{class_id}_{k}.jpg", png(n))
            images.append(f"{n} {folder}/Bird_{class_id}_{k}.jpg\n")
            labels.append(f"{n} {class_id}\n")
            split.append(f"{n} {int(k < 2)}\n")
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels), ("classes.txt", classes),
                       ("train_test_split.txt", split)):
        write(root / name, text="".join(rows))
    return root


def test_csv_with_header_split_column_missing_and_bad_files(tmp_path):
    rows = ["path,label,split"]
    for i, (label, part) in enumerate([("10", "train")] * 3 + [("9", "train")] * 3 + [("100", "test")] * 3):
        write(tmp_path / "imgs" / f"{i}.png", png(i))
        rows.append(f"imgs/{i}.png,{label},{part}")
    write(tmp_path / "imgs" / "bad.png", b"not a png")
    rows += ["imgs/bad.png,9,train", "imgs/gone.png,10,train"]
    listing = write(tmp_path / "mine.csv", text="\n".join(rows) + "\n")
    images = lists.load_list(str(listing))
    assert images.class_names == ("9", "10", "100")  # integer ids in numeric order
    assert len(images) == 9 and all(p.startswith(str(tmp_path)) for p in images.paths)
    assert images.splits.tolist() == ["train"] * 6 + ["test"] * 3
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in images.report["skipped"]}
    assert reasons["gone.png"] == "listed but missing" and reasons["bad.png"].startswith("not a decodable image")
    assert splits.list_test_classes(images).tolist() == [2]
    with pytest.raises(UserInputError, match=r"2 listed image\(s\) of .*mine.csv' cannot be used: .*bad.png"):
        lists.load_list(str(listing), on_bad_file="error")
    assert lists.dataset_name(str(listing)) == "mine"
    assert images.report["format"] == "csv"  # the format, not the file's name


@pytest.mark.parametrize("name,fmt,dataset", [
    ("mylist.csv", "csv", "mylist"),
    ("LIST.CSV", "csv", "LIST"),
    ("Ebay_test.txt", "stanford_online_products", "stanford_online_products"),
    ("list_eval_partition.txt", "inshop", "inshop"),
    ("images.txt", "cub200", "cub200"),
    ("wnids.txt", "tiny_imagenet", "tiny_imagenet"),
    ("files.txt", None, "files"),
])
def test_list_format_and_dataset_name_by_file_name(name, fmt, dataset):
    assert lists.list_format(f"/data/{name}") == fmt
    assert lists.dataset_name(f"/data/{name}") == dataset


@pytest.mark.parametrize("text, message", [
    ("a.png,x\nb.png,y,z\n", "line 2: expected path,label[,split] with the same number of columns"),
    ("a.png\n", "line 1: expected path,label[,split]"),
    ("path,label\n", "no rows"),
])
def test_malformed_csv_names_the_line(tmp_path, text, message):
    with pytest.raises(UserInputError, match=None) as err:
        lists.load_list(str(write(tmp_path / "l.csv", text=text)))
    assert message in str(err.value)


def test_unknown_list_and_missing_images(tmp_path):
    with pytest.raises(UserInputError, match=r"expected a list file, one of \['\*.csv"):
        lists.load_list(str(write(tmp_path / "files.txt", text="x 1\n")))
    listing = write(tmp_path / "l.csv", text="nowhere/a.png,1\nnowhere/b.png,2\n")
    with pytest.raises(UserInputError, match=r"first image 'nowhere/a.png' is not under .*Set `image_root`"):
        lists.load_list(str(listing))
    with pytest.raises(UserInputError, match=r"Invalid value for `image_root`"):
        lists.load_list(str(listing), image_root=str(tmp_path / "nope"))


def test_sop_layout_gives_the_published_class_split(sop):
    cfg = config.load("default", ["data.source=list", f"data.path={sop / 'Ebay_train.txt'}"])
    assert cfg.run.name == "stanford_online_products" and cfg.data.test_classes == ()
    split = load_split(cfg)
    assert split.dataset.class_names == ("1", "2", "3", "4", "5")
    assert split.test_class_names == ["4", "5"] and np.unique(split.train.labels).tolist() == [0, 1, 2]
    assert split.dataset.report["images_per_split"] == {"test": 6, "train": 9}
    assert split.dataset.report["format"] == "stanford_online_products"
    # Either file, or Ebay_info.txt, names the same dataset.
    assert len(lists.load_list(str(sop / "Ebay_test.txt"))) == 15


def test_inshop_layout_holds_out_query_and_gallery_items(inshop):
    cfg = config.load("default", ["data.source=list", f"data.path={inshop / 'Eval' / 'list_eval_partition.txt'}"])
    split = load_split(cfg)
    assert split.dataset.report["image_root"] == str((inshop / "Img").resolve())
    assert split.test_class_names == ["id_00000004", "id_00000005", "id_00000006"]
    assert sorted(set(split.test.splits)) == ["gallery", "query"] and set(split.train.splits) == {"train"}


def test_cub_layout_uses_class_names_and_the_metric_learning_protocol(cub):
    images = lists.load_list(str(cub / "images.txt"))
    assert images.class_names == ("001.Bird_1", "002.Bird_2", "003.Bird_3", "004.Bird_4")
    assert splits.list_test_classes(images) is None  # train_test_split.txt is per image
    split = load_split(config.load("default", ["data.source=list", f"data.path={cub / 'images.txt'}"]))
    assert split.test_class_names == ["003.Bird_3", "004.Bird_4"]  # the second half, as the papers split CUB


def test_list_config_keys(sop):
    with pytest.raises(UserInputError, match=r"`data.path`: expected the list file when data.source=list"):
        config.load("default", ["data.source=list"])
    with pytest.raises(UserInputError, match=r"`data.image_root`: expected null unless data.source=list"):
        config.load("default", ["data.image_root=/x"])
    with pytest.raises(UserInputError, match=r"Invalid value for `data.path`: expected a list file"):
        load_split(config.load("default", ["data.source=list", f"data.path={sop / 'missing.csv'}"]))


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_list_presets_need_the_list_and_split_it_as_published(sop, inshop, cub):
    with pytest.raises(UserInputError, match=r"`data.path`: expected the list file when data.source=list"):
        config.load("sop_resnet50")
    cfg = config.load("sop_resnet50", [f"data.path={sop / 'Ebay_train.txt'}"])
    model = cfg.model
    assert (model.backbone, model.image_size, model.embedding_dim, cfg.data.flip) == ("resnet50", 224, 512, True)
    assert (cfg.sampler.classes_per_batch, cfg.sampler.examples_per_class, cfg.run.name) == (32, 2, "sop_resnet50")
    assert load_split(cfg).test_class_names == ["4", "5"]
    shop = config.load("inshop_resnet50", [f"data.path={inshop / 'Eval' / 'list_eval_partition.txt'}"])
    assert shop.run.name == "inshop_resnet50" and len(load_split(shop).test_class_names) == 3
    # CUB from its own archive instead of TFDS: the same preset, another source.
    birds = config.load("cub200_resnet50", ["data.source=list", f"data.path={cub / 'images.txt'}"])
    assert birds.data.tfds_name is None and load_split(birds).test_class_names == ["003.Bird_3", "004.Bird_4"]


@pytest.mark.slow
def test_inshop_run_scores_queries_against_the_gallery(inshop, tmp_path):
    from tfsim.training import train
    cfg = config.load("default", ["data.source=list", f"data.path={inshop / 'Eval' / 'list_eval_partition.txt'}",
                                  "model.image_size=16", "model.width=4", "model.embedding_dim=8",
                                  "sampler.classes_per_batch=2", "sampler.examples_per_class=2", "train.epochs=1",
                                  "train.steps_per_epoch=2", "eval.recall_ks=1,2", "export.enabled=false",
                                  "whitening.enabled=false", f"run.root={tmp_path}"])
    result = train(cfg, verbose=0)
    m = result.metrics
    # 4 query images (items 4 and 5, two views each) against 6 gallery images (items 4, 5, 6).
    assert m["protocol"] == "query_gallery" and m["num_queries"] == 4
    assert m["baselines"]["raw_pixels"]["num_queries"] == 4


def test_database_query_protocol_on_cub_layout(cub):
    cfg = config.load("default", ["data.source=list", f"data.path={cub / 'images.txt'}",
                                  "data.protocol=database_query"])
    split = load_split(cfg)
    assert set(split.train.splits) == {"train"} and len(split.train) == 8  # 2 training images x 4 classes
    assert len(split.test) == 16 and sorted(set(split.test.splits)) == ["gallery", "query"]
    queries = split.test.splits == "query"
    assert set(split.test.ids[queries]) == set(split.dataset.ids[split.dataset.splits == "test"])
    assert set(split.test.ids[~queries]) == set(split.train.ids)  # the database is the training images
    with pytest.raises(UserInputError, match=r"`data.protocol`: 'database_query' needs a source that says"):
        load_split(config.load("default", ["data.protocol=database_query", "data.test_classes="]))
    with pytest.raises(UserInputError, match=r"`data.test_classes`: expected empty with data.protocol=database_query"):
        config.load("default", ["data.protocol=database_query", "data.test_classes=1,2"])


@pytest.mark.slow
def test_database_query_run_scores_test_images_against_training_images(cub, tmp_path):
    from tfsim.training import train
    cfg = config.load("default", ["data.source=list", f"data.path={cub / 'images.txt'}",
                                  "data.protocol=database_query", "model.image_size=16", "model.width=4",
                                  "model.embedding_dim=8", "sampler.classes_per_batch=2",
                                  "sampler.examples_per_class=2", "train.epochs=1", "train.steps_per_epoch=2",
                                  "export.enabled=false", "whitening.enabled=false", f"run.root={tmp_path}"])
    m = train(cfg, verbose=0).metrics
    assert m["protocol"] == "query_gallery" and m["num_queries"] == 8  # the 8 test images


def test_tiny_imagenet_layout_and_the_dogs_and_tiny_presets(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    write(root / "wnids.txt", text="\n".join(wnids) + "\n")
    rows, n = [], 0
    for wnid in wnids:
        for k in range(3):
            n += 1
            write(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", png(n))
        write(root / "train" / wnid / f"{wnid}_boxes.txt", text="ignored\n")
        n += 1
        write(root / "val" / "images" / f"val_{n}.JPEG", png(n))
        rows.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t10\t10\n")
    write(root / "val" / "val_annotations.txt", text="".join(rows))
    cfg = config.load("tiny_imagenet", [f"data.path={root / 'wnids.txt'}"])
    assert (cfg.run.name, cfg.data.protocol, cfg.model.image_size) == ("tiny_imagenet", "database_query", 64)
    split = load_split(cfg)
    assert split.dataset.class_names == tuple(wnids) and len(split.train) == 9
    assert (split.test.splits == "query").sum() == 3  # the val images query the training images
    assert split.dataset.report["images_per_split"] == {"train": 9, "val": 3}
    dogs = config.load("dogs_resnet50")
    assert (dogs.data.tfds_name, dogs.data.protocol, dogs.data.augmentation) == (
        "stanford_dogs", "database_query", "random_resized_crop")


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_folder_split_by_seeded_fraction_and_csv_query_gallery(tmp_path):
    root = tmp_path / "photos"
    for c in range(10):
        for i in range(2):
            write(root / f"c{c}" / f"{i}.png", png(c * 10 + i))
    base = ["data.source=folder", f"data.path={root}", "data.test_fraction=0.3"]
    first = load_split(config.load("default", base))
    assert len(first.test_class_names) == 3 and first.test_class_names != ["c7", "c8", "c9"]
    assert load_split(config.load("default", base)).test_class_names == first.test_class_names  # seeded
    other = {tuple(load_split(config.load("default", base + [f"data.split_seed={s}"])).test_class_names)
             for s in range(1, 5)}
    assert len(other) > 1
    with pytest.raises(UserInputError, match=r"`data.test_fraction`: expected 0 when data.test_classes names"):
        config.load("default", ["data.test_fraction=0.3"])  # the default preset names its test classes
    # An explicit query / gallery split of one's own, as a CSV.
    rows = [f"c{c}/{i}.png,c{c},{'train' if c < 6 else ('query' if i == 0 else 'gallery')}"
            for c in range(10) for i in range(2)]
    listing = write(root / "split.csv", text="\n".join(rows) + "\n")
    split = load_split(config.load("default", ["data.source=list", f"data.path={listing}"]))
    assert split.test_class_names == ["c6", "c7", "c8", "c9"]
    from tfsim.evaluation import query_mask
    assert query_mask(split.test.splits).sum() == 4
