"""The embodiment registry: the design table's dims, cameras, horizons and rates, and the data plane's view."""

import numpy as np
import pytest

from actors.embodiments import EMBODIMENTS, Embodiment, get_embodiment, schemas
from fleet.episode import EmbodimentSchema

# name -> (state/action dim, cameras, horizon, control Hz), from DESIGN.md's embodiments table
EXPECTED = {
    "franka": (8, ("external", "wrist"), 15, 15.0),
    "yam_bimanual": (14, ("top", "left_wrist", "right_wrist"), 30, 30.0),
    "so100": (6, ("front", "wrist"), 30, 30.0),
    "so101": (6, ("front", "wrist"), 30, 30.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_embodiment_matches_design_table(name):
    dim, cameras, horizon, hz = EXPECTED[name]
    e = EMBODIMENTS[name]
    assert (e.state_dim, e.action_dim, e.cameras, e.chunk_horizon, e.control_hz) == (
        dim,
        dim,
        cameras,
        horizon,
        hz,
    )
    assert e.main_camera == cameras[0]
    assert len(e.joint_names) == dim - len(e.grippers)
    low, high = e.action_low, e.action_high
    assert low.shape == high.shape == (dim,) and np.all(low < high)
    assert np.all(low[list(e.gripper_indices)] == 0.0) and np.all(high[list(e.gripper_indices)] == 1.0)


def test_yam_is_two_arms_of_six_joints_and_a_gripper():
    e = EMBODIMENTS["yam_bimanual"]
    assert [len(a) for a in e.arms] == [7, 7]
    assert e.dof_names[:7] == e.arms[0] and e.arms[0][-1] == "left_gripper"


def test_schemas_are_the_data_planes_view():
    s = schemas()
    assert set(s) == set(EMBODIMENTS)
    for name, schema in s.items():
        assert isinstance(schema, EmbodimentSchema)
        e = EMBODIMENTS[name]
        assert (schema.name, schema.state_dim, schema.action_dim, schema.cameras) == (
            name,
            e.state_dim,
            e.action_dim,
            e.cameras,
        )


def test_bad_embodiments_are_refused_with_a_reason():
    good = EMBODIMENTS["so101"]
    with pytest.raises(ValueError, match="empty"):
        Embodiment(**{**good.__dict__, "joint_limits": ((1.0, -1.0), *good.joint_limits[1:])})
    with pytest.raises(ValueError, match="partition"):
        Embodiment(**{**good.__dict__, "arms": (good.dof_names[:3],)})
    with pytest.raises(KeyError, match="known"):
        get_embodiment("ur5")
