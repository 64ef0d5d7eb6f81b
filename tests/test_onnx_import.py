#!/usr/bin/python3
"""test_onnx_import.py: the ONNX converter (tools/onnx_import.py) and `edgetune import`.

Needs python3-onnx and python3-numpy (scripts/setup.sh installs them), not torch: it converts the
committed ONNX fixtures (tests/fixtures/make_onnx_fixtures.py made them) and builds the models
of the error cases with onnx.helper.

    test_onnx_import.py [path/to/edgetune]
"""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
IMPORT = os.path.join(HERE, "..", "tools", "onnx_import.py")
EDGETUNE = None  # the CLI, when given


def fixture(name):
    return os.path.join(FIXTURES, name)


class ConverterTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.tmp.name, "out.etb")

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, model, *args, out=None, program=None):
        cmd = [program] if program else [sys.executable, IMPORT]
        r = subprocess.run(cmd + [model, out or self.out, *args], capture_output=True, text=True)
        return r.returncode, r.stdout + r.stderr

    def save(self, model, name="model.onnx"):
        path = os.path.join(self.tmp.name, name)
        onnx.save(model, path)
        return path

    def assert_refused(self, rc, message, *needles):
        self.assertEqual(rc, 1, message)
        for n in needles:
            self.assertIn(n, message)
        # Nothing written: no output, no temporary left next to it.
        self.assertEqual([n for n in os.listdir(self.tmp.name) if n.startswith("out.etb")], [],
                         message)

    def test_conversion_is_reproducible(self):
        """Converting the fixtures again gives the committed bytes (C++ tests read those)."""
        head = os.path.join(self.tmp.name, "head.etk")
        rc, msg = self.convert(fixture("lenet.onnx"), "--output", "/Relu_3", "--mean", "0.5",
                               "--std", "0.25", "--head-output", "output", "--head", head)
        self.assertEqual(rc, 0, msg)
        self.assertIn("32 ('/Relu_3_output_0')", msg)
        with open(self.out, "rb") as a, open(fixture("lenet.etb"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        with open(head, "rb") as a, open(fixture("lenet-head.etk"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        cnn = os.path.join(HERE, "..", "examples", "data", "cnn-0-5")
        rc, msg = self.convert(cnn + ".onnx", "--output", "/features/relu/Relu", "--mean",
                               "0.2860", "--std", "0.3530", "--head-output", "output", "--head",
                               head)
        self.assertEqual(rc, 0, msg)
        for got, want in ((self.out, cnn + ".etb"), (head, cnn + "-head.etk")):
            with open(got, "rb") as a, open(want, "rb") as b:
                self.assertEqual(a.read(), b.read(), want)
        for name in ("mobile", "text", "ops", "gemm"):
            rc, msg = self.convert(fixture(name + ".onnx"))
            self.assertEqual(rc, 0, msg)
            with open(self.out, "rb") as a, open(fixture(name + ".etb"), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)

    def test_unsupported_ops_and_attributes_in_one_error(self):
        rc, msg = self.convert(fixture("lstm.onnx"))
        self.assert_refused(rc, msg, "LSTM node '/LSTM': unsupported operator",
                            "Transpose node '/Transpose'")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 8, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 48])
        nodes = [
            helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2],
                             ceil_mode=1),
            helper.make_node("Softmax", ["p"], ["s"], name="soft"),
            helper.make_node("Gemm", ["s", "s"], ["y"], name="mm", transA=1),
        ]
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 13)])
        rc, msg = self.convert(self.save(model))
        self.assert_refused(rc, msg, "MaxPool node 'pool': ceil_mode 1",
                            "Softmax node 'soft': unsupported operator", "Gemm node 'mm': transA 1")
        # Cutting before the unsupported nodes converts what remains.
        rc, msg = self.convert(fixture("lstm.onnx"), "--output", "/Transpose")
        self.assert_refused(rc, msg, "Transpose node '/Transpose'")

    def test_pad_only_before_conv_or_average_pool(self):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 6, 6])
        pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
        nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
                 helper.make_node("Relu", ["p"], ["y"], name="relu")]
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [pads]),
                                  opset_imports=[helper.make_opsetid("", 13)])
        rc, msg = self.convert(self.save(model))
        self.assert_refused(rc, msg, "Relu node 'relu' reads the output of a Pad")

    def test_dynamic_shape(self):
        rc, msg = self.convert(fixture("dynamic.onnx"))
        self.assert_refused(rc, msg, "dynamic dimension 'height' (axis 2)", "--input-shape")
        rc, msg = self.convert(fixture("dynamic.onnx"), "--input-shape", "2,10,10")
        self.assert_refused(rc, msg, "does not fit input")
        rc, msg = self.convert(fixture("dynamic.onnx"), "--input-shape", "1,10,12")
        self.assertEqual(rc, 0, msg)
        self.assertIn("features 160", msg)  # 2 x 8 x 10

    def test_corrupt_and_missing_files(self):
        with open(fixture("lenet.onnx"), "rb") as f:
            good = f.read()
        for name, data in (("truncated", good[: len(good) // 2]), ("garbage", b"\x08\x07" * 50),
                           ("empty", b""), ("flipped", good[:40] + bytes([good[40] ^ 0xFF]) +
                                            good[41:])):
            path = os.path.join(self.tmp.name, name + ".onnx")
            with open(path, "wb") as f:
                f.write(data)
            rc, msg = self.convert(path)
            self.assert_refused(rc, msg, f"'{path}' is not a valid ONNX")
            os.unlink(path)
        rc, msg = self.convert(os.path.join(self.tmp.name, "nope.onnx"))
        self.assert_refused(rc, msg, "cannot read")

    def test_bad_options_write_nothing_and_keep_the_old_file(self):
        with open(self.out, "wb") as f:
            f.write(b"old")
        cut = ["--output", "/Relu_3"]
        head = ["--head", os.path.join(self.tmp.name, "h.etk")]
        for args, needle in ((["--output", "nowhere"], "no node or value named 'nowhere'"),
                             (cut + ["--mean", "1,2"], "--mean has 2 values for 1 channels"),
                             (cut + ["--std", "0"], "--std has a zero"),
                             (cut + ["--head-output", "/conv1/Conv"] + head, "one Linear layer")):
            rc, msg = self.convert(fixture("lenet.onnx"), *args)
            self.assertEqual(rc, 1, msg)
            self.assertIn(needle, msg)
            with open(self.out, "rb") as f:
                self.assertEqual(f.read(), b"old")
            self.assertEqual(sorted(os.listdir(self.tmp.name)), ["out.etb"])

    def test_batchnorm_without_conv_and_reshape_arithmetic(self):
        """A BatchNorm after a non-conv, a Shape/Gather/Concat/Reshape chain (folded here)."""
        rng = np.random.default_rng(0)
        inits = [numpy_helper.from_array(rng.normal(size=3).astype(np.float32), n)
                 for n in ("g", "b", "m")]
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), "v"))
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus"))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 48])
        nodes = [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["bn"], name="bn"),
            helper.make_node("Shape", ["bn"], ["shape"], name="shape"),
            helper.make_node("Gather", ["shape", "zero"], ["batch"], name="batch", axis=0),
            helper.make_node("Concat", ["batch", "minus"], ["target"], name="target", axis=0),
            helper.make_node("Reshape", ["bn", "target"], ["y"], name="flat"),
        ]
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                  opset_imports=[helper.make_opsetid("", 13)])
        rc, msg = self.convert(self.save(model))
        self.assertEqual(rc, 0, msg)
        self.assertIn("features 48", msg)

    def test_cli_import(self):
        if EDGETUNE is None:
            self.fail("pass the edgetune executable to test `edgetune import`")
        text = os.path.join(self.tmp.name, "text.etb")
        rc, msg = self.convert(fixture("text.onnx"), out=text, program=EDGETUNE)
        self.assertEqual(rc, 0, msg)
        self.assertTrue(os.path.exists(text))
        rc, msg = self.convert(fixture("lstm.onnx"), program=EDGETUNE)
        self.assert_refused(rc, msg, "LSTM node")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        EDGETUNE = os.path.abspath(sys.argv.pop(1))
        # `edgetune import` passes its arguments on: the program is "edgetune import".
        wrapper = tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False)
        wrapper.write(f'#!/bin/sh\nexec "{EDGETUNE}" import "$@"\n')
        wrapper.close()
        os.chmod(wrapper.name, 0o755)
        EDGETUNE = wrapper.name
    try:
        unittest.main(verbosity=2)
    finally:
        if EDGETUNE:
            os.unlink(EDGETUNE)
