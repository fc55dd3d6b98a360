"""Pool records become chat messages with images placed where docs/design.md section 1a says."""

import pytest

from scalselect import InputError
from scalselect.data.conversations import to_messages

IMG = {"type": "image"}


def text(t):
    return {"type": "text", "text": t}


def test_llava_single_image_tag_removed_and_stripped():
    rec = {
        "id": "1",
        "image": "coco/1.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?  "},
            {"from": "gpt", "value": " A cat. "},
            {"from": "human", "value": "Colour?"},
            {"from": "gpt", "value": "Grey."},
        ],
    }
    messages, images = to_messages(rec, "llava")
    assert images == ["coco/1.jpg"]
    assert messages == [
        {"role": "user", "content": [IMG, text("What is this?")]},
        {"role": "assistant", "content": [text(" A cat. ")]},  # replies verbatim
        {"role": "user", "content": [text("Colour?")]},
        {"role": "assistant", "content": [text("Grey.")]},
    ]


def test_images_go_to_the_turns_that_carry_their_tags():
    rec = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Compare them."},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "<image><image> Which is bigger?"},
            {"role": "assistant", "content": "Left."},
            {"role": "user", "content": "And <image> this one?"},
            {"role": "assistant", "content": "Small."},
        ],
        "images": ["a.jpg", "b.jpg", "c.jpg"],
    }
    messages, images = to_messages(rec, "sharegpt")
    assert images == ["a.jpg", "b.jpg", "c.jpg"]
    assert messages[0] == {"role": "system", "content": [text("Be brief.")]}
    assert messages[1]["content"] == [text("Compare them.")]
    assert messages[3]["content"] == [IMG, IMG, text("Which is bigger?")]
    assert messages[5]["content"] == [IMG, text("And  this one?")]


def test_without_tags_all_images_go_to_the_first_user_turn():
    rec = {
        "image": ["x.png", "y.png"],
        "conversations": [
            {"from": "human", "value": "Describe."},
            {"from": "gpt", "value": "Two photos."},
            {"from": "human", "value": "More?"},
            {"from": "gpt", "value": "No."},
        ],
    }
    messages, _ = to_messages(rec, "llava")
    assert messages[0]["content"] == [IMG, IMG, text("Describe.")]
    assert messages[2]["content"] == [text("More?")]


def test_a_tag_alone_leaves_only_the_image_part():
    rec = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A dog."}]}
    assert to_messages(rec, "llava")[0][0]["content"] == [IMG]


def test_text_only_samples_have_no_images():
    rec = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    messages, images = to_messages(rec, "llava")
    assert images == [] and messages[0]["content"] == [text("Hi")]


@pytest.mark.parametrize(
    "rec,layout,reason",
    [
        ({"image": "a", "conversations": [{"from": "gpt", "value": "x"}]}, "llava", "no user turn"),
        ({"image": "a", "conversations": [{"from": "human", "value": "<image> q"}]}, "llava", "no assistant turn"),
        (
            {"image": ["a", "b"], "conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "x"}]},
            "llava",
            "1 <image> tags for 2 images",
        ),
        (
            {
                "images": ["a"],
                "messages": [{"role": "user", "content": "<image><image> q"}, {"role": "assistant", "content": "x"}],
            },
            "sharegpt",
            "2 <image> tags for 1 images",
        ),
        ({"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "x"}]}, "llava", "empty"),
        ({"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]}, "llava", "non-text"),
        ({"conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "x"}]}, "llava", "known role"),
        (
            {"image": ["a", 3], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]},
            "llava",
            "images must be paths",
        ),
    ],
)
def test_bad_records_say_why(rec, layout, reason):
    with pytest.raises(InputError, match=reason):
        to_messages(rec, layout)
