"""tf.data doing what benches/data_pipeline.rs does, for comparison.

EfficientNet's training preprocessing (tensorflow/tpu preprocessing.py):
sample_distorted_bounding_box (area 0.08..1, aspect 3/4..4/3, 10 attempts) +
decode_and_crop_jpeg, bicubic resize to 224, random horizontal flip, mean/std
normalization; batch 32. Output stays NHWC (TF's native layout).

    python3 benches/tf_data_pipeline.py [DIR=/tmp/bench_jpegs] [THREADS=2] [EPOCHS=5]
"""
import glob
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

DIR = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench_jpegs"
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
EPOCHS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
SIZE, BATCH = 224, 32

# Before any op runs: thread pools are fixed at initialization.
tf.config.threading.set_inter_op_parallelism_threads(THREADS)
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
MEAN = tf.constant([0.485 * 255, 0.456 * 255, 0.406 * 255])
STD = tf.constant([0.229 * 255, 0.224 * 255, 0.225 * 255])


def preprocess(path):
    data = tf.io.read_file(path)
    shape = tf.image.extract_jpeg_shape(data)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=bbox, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    oy, ox, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(size)
    image = tf.image.decode_and_crop_jpeg(data, tf.stack([oy, ox, h, w]), channels=3)
    image = tf.image.resize([image], [SIZE, SIZE], method="bicubic")[0]
    image = tf.image.random_flip_left_right(image)
    return (image - MEAN) / STD


def main():
    files = sorted(glob.glob(os.path.join(DIR, "*", "*.jpg")))
    options = tf.data.Options()
    options.threading.private_threadpool_size = THREADS
    options.threading.max_intra_op_parallelism = 1
    ds = (tf.data.Dataset.from_tensor_slices(files).repeat()
          .map(preprocess, num_parallel_calls=THREADS)
          .batch(BATCH).prefetch(2).with_options(options))
    per_epoch = -(-len(files) // BATCH)
    it = iter(ds)
    for _ in range(per_epoch):  # warm-up epoch
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(EPOCHS * per_epoch):
        n += int(next(it).shape[0])
    rate = n / (time.perf_counter() - start)
    print("tf.data %s: %d images, %d threads, %d epochs: %.0f images/s"
          % (tf.__version__, len(files), THREADS, EPOCHS, rate))


if __name__ == "__main__":
    main()
