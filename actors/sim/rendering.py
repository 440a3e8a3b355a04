"""Offscreen camera rendering of a MuJoCo scene: RGB for every camera and metric depth for the main one.

One OpenGL context per renderer (EGL on a headless machine: Mesa's llvmpipe renders on the CPU), shadows and
reflections off (they cost 10-50x at these sizes and teach a small policy nothing), and one render pass per
camera: the main camera's colour and depth buffers are read from the same pass. Close it explicitly: GL
contexts are not freed reliably by the garbage collector.
"""

from __future__ import annotations

import os

import mujoco
import numpy as np

# Hidden geoms (the unused shapes of an object slot) live in this group, which no camera draws.
HIDDEN_GROUP = 3


def _gl_context_class() -> type:
    """The GL context to render with: EGL unless MUJOCO_GL asks for another backend.

    MuJoCo picks `mujoco.GLContext` from MUJOCO_GL when it is first imported; a process that imported mujoco
    before `actors.sim` set the default would otherwise be stuck with GLFW, which needs a display.
    """
    if os.environ.get("MUJOCO_GL", "egl").lower() == "egl":
        from mujoco.egl import GLContext

        return GLContext
    return mujoco.GLContext


class CameraRenderer:
    """Renders a fixed list of model cameras at one image size."""

    def __init__(
        self,
        model: mujoco.MjModel,
        cameras: tuple[str, ...],
        height: int,
        width: int,
        depth_camera: str | None,
    ) -> None:
        if height > model.vis.global_.offheight or width > model.vis.global_.offwidth:
            raise ValueError(
                f"image {height}x{width} exceeds the offscreen buffer "
                f"{model.vis.global_.offheight}x{model.vis.global_.offwidth}: build the scene with a larger size"
            )
        self._model = model
        self._cam_ids = {}
        for name in cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cid < 0:
                raise ValueError(f"camera {name!r} is not in the model")
            self._cam_ids[name] = cid
        if depth_camera is not None and depth_camera not in self._cam_ids:
            raise ValueError(f"depth camera {depth_camera!r} is not among {cameras}")
        self.depth_camera = depth_camera
        self.height, self.width = height, width
        self._gl = _gl_context_class()(width, height)
        self._gl.make_current()
        self._con: mujoco.MjrContext | None = mujoco.MjrContext(
            model, mujoco.mjtFontScale.mjFONTSCALE_100.value
        )
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._con)
        self._con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=max(500, 4 * model.ngeom))
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._option = mujoco.MjvOption()
        self._option.geomgroup[HIDDEN_GROUP] = 0
        self._option.sitegroup[:] = 0  # sites are bookkeeping, not things a camera should see
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), dtype=np.uint8)
        self._zbuf = np.empty((height, width), dtype=np.float32)
        self._pid = os.getpid()

    def render(self, data: mujoco.MjData) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Images {camera: (H, W, 3) uint8} and the depth camera's (H, W) float32 metres (None if no depth)."""
        if self._con is None:
            raise RuntimeError("render called after close()")
        self._gl.make_current()
        images: dict[str, np.ndarray] = {}
        depth = None
        for name, cid in self._cam_ids.items():
            self._camera.fixedcamid = cid
            mujoco.mjv_updateScene(
                self._model,
                data,
                self._option,
                None,
                self._camera,
                mujoco.mjtCatBit.mjCAT_ALL.value,
                self._scene,
            )
            mujoco.mjr_render(self._rect, self._scene, self._con)
            want_depth = name == self.depth_camera
            mujoco.mjr_readPixels(self._rgb, self._zbuf if want_depth else None, self._rect, self._con)
            images[name] = np.flipud(self._rgb).copy()  # OpenGL rows run bottom-up
            if want_depth:
                depth = np.flipud(self._linear_depth(self._zbuf)).copy()
        return images, depth

    def _linear_depth(self, zbuf: np.ndarray) -> np.ndarray:
        """(H, W) depth buffer in [0, 1] (reversed: 1 at near, 0 at far) to distance along the view axis, m."""
        extent = self._model.stat.extent
        near = np.float64(self._model.vis.map.znear * extent)
        far = np.float64(self._model.vis.map.zfar * extent)
        # Perspective projection inverted for the reversed-Z buffer MuJoCo reads with mjDEPTH_ZEROFAR.
        c = 0.5 * (far + near) / (far - near) - 0.5
        d = far * near / (far - near)
        return (d / (zbuf.astype(np.float64) + c)).astype(np.float32)

    def close(self) -> None:
        """Free the GL resources; safe to call twice, and a no-op in a forked child that does not own them."""
        if self._con is None:
            return
        if os.getpid() == self._pid:
            self._gl.make_current()
            self._con.free()
            self._gl.free()
        self._con = None

    def __del__(self) -> None:
        # A safety net only: owners call close(). Errors at interpreter exit are not worth reporting.
        try:
            self.close()
        except Exception:
            pass
