"""edgetune.py — a Python binding of libedgetune.so through its C ABI (edgetune.h) and
ctypes alone: what a JNI, Swift or Dart FFI binding does, in a language the tests can run.

    lib = edgetune.Library("libedgetune.so")
    with lib.backbone("backbone.etb") as bb, lib.open("user.db", bb, classes=3) as p:
        p.add(rows, labels)                  # rows: list of float lists
        report = p.train(epochs=20, on_progress=show)
        top = p.predict(row, k=3)            # [(label, probability), ...] best first

Every failed call raises edgetune.Error carrying the status name and the engine's message;
the error object is freed here, as edgetune.h asks. Structs mirror edgetune.h field by field
and are filled by their *_default function first (struct_size).
"""
import ctypes as C

c_status = C.c_int
PROGRESS_FN = None  # set by Library (needs the et_progress type below)


class Error(Exception):
    """A failed call: .status is the et_status name, str() the engine's message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class OpenOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("head", C.c_int32), ("classes", C.c_int64),
                ("hidden", C.POINTER(C.c_int64)), ("hidden_count", C.c_size_t),
                ("temperature", C.c_float), ("durability", C.c_int32), ("seed", C.c_uint64),
                ("validation_fraction", C.c_float), ("upgrade_backbone", C.c_int32),
                ("initial_head_path", C.c_char_p)]


class Progress(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("step", C.c_int64), ("epoch", C.c_int32),
                ("loss", C.c_float), ("elapsed_ms", C.c_int64)]


PROGRESS_FN = C.CFUNCTYPE(C.c_int, C.POINTER(Progress), C.c_void_p)


class TrainOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("epochs", C.c_int32), ("max_steps", C.c_int64),
                ("deadline_ms", C.c_int64), ("batch", C.c_int64), ("optimizer", C.c_int32),
                ("learning_rate", C.c_float), ("weight_decay", C.c_float),
                ("momentum", C.c_float), ("clip_norm", C.c_float), ("seed", C.c_uint64),
                ("replay", C.c_int32), ("replay_size", C.c_int64),
                ("balance_classes", C.c_int32), ("label_smoothing", C.c_float),
                ("tolerance", C.c_float), ("on_progress", PROGRESS_FN),
                ("user_data", C.c_void_p)]


class Metrics(C.Structure):
    _fields_ = [("loss", C.c_double), ("accuracy", C.c_double),
                ("balanced_accuracy", C.c_double), ("samples", C.c_int64)]


class TrainReport(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("outcome", C.c_int32), ("steps", C.c_int64),
                ("epochs", C.c_int32), ("train_samples", C.c_int64),
                ("validation_samples", C.c_int64), ("duration_ms", C.c_int64),
                ("retrained_from_base", C.c_int32), ("has_metrics", C.c_int32),
                ("before", Metrics), ("after", Metrics), ("reason", C.c_char * 256)]

    OUTCOMES = ("committed", "rolled_back", "nothing_to_do", "cancelled")

    @property
    def outcome_name(self):
        return self.OUTCOMES[self.outcome]


class Info(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("samples", C.c_int64), ("classes", C.c_int64),
                ("input_kind", C.c_int32), ("input_width", C.c_int64),
                ("feature_width", C.c_int64), ("head", C.c_int32)]


class Prediction(C.Structure):
    _fields_ = [("label", C.c_int32), ("probability", C.c_float)]


HEADS = {"linear": 0, "mlp": 1, "prototype": 2}
OPTIMIZERS = {"adam": 0, "adamw": 1, "sgd": 2}


class Library:
    """The loaded shared library with argument types declared for every function used."""

    def __init__(self, path):
        lib = C.CDLL(path)
        err = C.POINTER(C.c_void_p)
        sigs = {
            "et_version": (C.c_char_p, []),
            "et_abi_version": (C.c_uint32, []),
            "et_status_name": (C.c_char_p, [c_status]),
            "et_error_message": (C.c_char_p, [C.c_void_p]),
            "et_error_free": (None, [C.c_void_p]),
            "et_backbone_load": (c_status, [C.c_char_p, C.POINTER(C.c_void_p), err]),
            "et_backbone_free": (None, [C.c_void_p]),
            "et_open_options_default": (c_status, [C.POINTER(OpenOptions), C.c_size_t]),
            "et_open": (c_status, [C.c_char_p, C.c_void_p, C.POINTER(OpenOptions),
                                   C.POINTER(C.c_void_p), err]),
            "et_close": (None, [C.c_void_p]),
            "et_add_floats": (c_status, [C.c_void_p, C.POINTER(C.c_float), C.c_size_t,
                                         C.c_size_t, C.POINTER(C.c_int32),
                                         C.POINTER(C.c_int64), err]),
            "et_predict_floats": (c_status, [C.c_void_p, C.POINTER(C.c_float), C.c_size_t,
                                             C.c_int32, C.POINTER(Prediction), C.c_size_t,
                                             C.POINTER(C.c_size_t), err]),
            "et_train_options_default": (c_status, [C.POINTER(TrainOptions), C.c_size_t]),
            "et_train_report_default": (c_status, [C.POINTER(TrainReport), C.c_size_t]),
            "et_train": (c_status, [C.c_void_p, C.POINTER(TrainOptions),
                                    C.POINTER(TrainReport), err]),
            "et_info_default": (c_status, [C.POINTER(Info), C.c_size_t]),
            "et_get_info": (c_status, [C.c_void_p, C.POINTER(Info), err]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.c = lib

    def version(self):
        return self.c.et_version().decode(), self.c.et_abi_version()

    def call(self, fn, *args):
        """Calls fn(*args, &error); raises Error (and frees the error object) on failure."""
        error = C.c_void_p()
        status = fn(*args, C.byref(error))
        if status != 0:
            message = self.c.et_error_message(error).decode()
            self.c.et_error_free(error)
            raise Error(self.c.et_status_name(status).decode(), message)

    def backbone(self, path):
        return Backbone(self, path)

    def open(self, path, backbone, classes, head="linear"):
        return Personalizer(self, path, backbone, classes, head)


class Backbone:
    def __init__(self, lib, path):
        self.lib, self.handle = lib, C.c_void_p()
        lib.call(lib.c.et_backbone_load, path.encode(), C.byref(self.handle))

    def close(self):
        self.lib.c.et_backbone_free(self.handle)  # NULL / freed: a no-op
        self.handle = C.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Personalizer:
    def __init__(self, lib, path, backbone, classes, head):
        self.lib, self.handle = lib, C.c_void_p()
        o = OpenOptions()
        lib.c.et_open_options_default(C.byref(o), C.sizeof(o))
        o.classes, o.head = classes, HEADS[head]
        lib.call(lib.c.et_open, path.encode(), backbone.handle, C.byref(o), C.byref(self.handle))

    def close(self):
        self.lib.c.et_close(self.handle)
        self.handle = C.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, rows, labels):
        """rows: n lists of the backbone's input width; labels: n ints. Returns the ids."""
        n, width = len(rows), len(rows[0]) if rows else 0
        data = (C.c_float * (n * width))(*[v for row in rows for v in row])
        ys = (C.c_int32 * n)(*labels)
        ids = (C.c_int64 * n)()
        self.lib.call(self.lib.c.et_add_floats, self.handle, data, n, width, ys, ids)
        return list(ids)

    def train(self, epochs=None, learning_rate=None, batch=None, optimizer="adam",
              on_progress=None):
        """on_progress(step, epoch, loss) -> truthy to cancel. Returns a TrainReport.
        None keeps the C default (et_train_options_default: learning_rate chosen from the
        head, ET_AUTO_LR)."""
        o = TrainOptions()
        self.lib.c.et_train_options_default(C.byref(o), C.sizeof(o))
        for name, value in (("epochs", epochs), ("learning_rate", learning_rate),
                            ("batch", batch)):
            if value is not None:
                setattr(o, name, value)
        o.optimizer = OPTIMIZERS[optimizer]
        if on_progress is not None:  # kept alive in this frame for the whole call
            callback = PROGRESS_FN(
                lambda p, _: 1 if on_progress(p[0].step, p[0].epoch, p[0].loss) else 0)
            o.on_progress = callback
        report = TrainReport()
        self.lib.c.et_train_report_default(C.byref(report), C.sizeof(report))
        self.lib.call(self.lib.c.et_train, self.handle, C.byref(o), C.byref(report))
        return report

    def predict(self, row, k=1):
        """Top-k [(label, probability)], best first; asks the ABI for the size first."""
        x = (C.c_float * len(row))(*row)
        count = C.c_size_t()
        self.lib.call(self.lib.c.et_predict_floats, self.handle, x, len(row), k, None, 0,
                      C.byref(count))
        out = (Prediction * count.value)()
        self.lib.call(self.lib.c.et_predict_floats, self.handle, x, len(row), k, out,
                      count.value, C.byref(count))
        return [(p.label, p.probability) for p in out[:count.value]]

    def info(self):
        info = Info()
        self.lib.c.et_info_default(C.byref(info), C.sizeof(info))
        self.lib.call(self.lib.c.et_get_info, self.handle, C.byref(info))
        return info
