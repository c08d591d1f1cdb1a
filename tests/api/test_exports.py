import uuid

from api.exports import member_name
from store.results import ImageFile


def test_member_names_are_flat_ascii_and_cannot_escape_their_cluster_folder() -> None:
    names = [
        member_name(ImageFile(seq, uuid.uuid4(), path, "b", 7, 0.9))
        for seq, path in enumerate(["../../etc/passwd", "a/b\\c\x00d.png", ".hidden", "ünï côde.jpg", "..", ""])
    ]
    assert names == [
        "cluster-007/000000-etc_passwd",
        "cluster-007/000001-a_b_c_d.png",
        "cluster-007/000002-hidden",
        "cluster-007/000003-n_c_de.jpg",
        "cluster-007/000004-image",
        "cluster-007/000005-image",
    ]
