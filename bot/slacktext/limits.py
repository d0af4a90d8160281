"""What Slack accepts, each number with the page that documents it (one place for these facts).

The Block Kit builders (bot/slacktext/blocks.py) cut and pack text to stay within them; the
payload checker the fake Slack runs on every call (bot/console/payloads.py) refuses anything past them.
"""

from __future__ import annotations

# https://api.slack.com/methods/chat.postMessage#truncating: the top-level `text` is truncated past
# 40,000 characters; Slack recommends at most 4,000.
TEXT_HARD = 40_000
TEXT_RECOMMENDED = 4_000

# https://api.slack.com/reference/block-kit/blocks: up to 50 blocks in a message, 100 in a modal or Home tab.
MESSAGE_BLOCKS = 50
VIEW_BLOCKS = 100

# Not documented as a number: chat.postMessage / chat.update answer `msg_blocks_too_long` past about
# 12,000 characters of text across a message's blocks (observed; issue 13). We stay well below it.
MESSAGE_BLOCKS_CHARS = 12_000
MESSAGE_BLOCKS_BUDGET = 11_000

# https://api.slack.com/reference/block-kit/blocks#section: text 3,000; up to 10 fields of 2,000 each.
SECTION_TEXT = 3_000
SECTION_FIELDS = 10
FIELD_TEXT = 2_000

# https://api.slack.com/reference/block-kit/blocks#header: plain_text, 150 characters.
HEADER_TEXT = 150

# https://api.slack.com/reference/block-kit/blocks#context: up to 10 elements; a text element is a
# text object (3,000 characters, https://api.slack.com/reference/block-kit/composition-objects#text).
CONTEXT_ELEMENTS = 10
CONTEXT_TEXT = 3_000

# https://api.slack.com/reference/block-kit/blocks#actions: up to 25 elements.
ACTIONS_ELEMENTS = 25

# https://api.slack.com/reference/block-kit/block-elements#button: text (plain_text) 75, action_id 255,
# value 2,000, url 3,000.
BUTTON_TEXT = 75
ACTION_ID = 255
BUTTON_VALUE = 2_000

# Any block_id: 255 characters (https://api.slack.com/reference/block-kit/blocks, every block type).
BLOCK_ID = 255

# https://api.slack.com/reference/block-kit/composition-objects#confirm: title 100, text 300, confirm 30,
# deny 30, every one of them plain_text.
CONFIRM_TITLE = 100
CONFIRM_TEXT = 300
CONFIRM_BUTTON = 30

# https://api.slack.com/reference/surfaces/views: title 24, submit 24, close 24 (plain_text),
# private_metadata 3,000, callback_id 255.
VIEW_TITLE = 24
VIEW_PRIVATE_METADATA = 3_000
VIEW_CALLBACK_ID = 255

# https://api.slack.com/reference/block-kit/blocks#input: label 2,000, hint 2,000 (plain_text).
INPUT_LABEL = 2_000

# https://api.slack.com/reference/block-kit/blocks#image: image_url 3,000, alt_text 2,000, title 2,000.
IMAGE_URL = 3_000
IMAGE_ALT_TEXT = 2_000

# https://api.slack.com/methods/views.open: views.open / views.publish take a view up to 250 kB of JSON.
VIEW_JSON_BYTES = 250_000

# https://api.slack.com/methods/files.getUploadURLExternal: filename required, length in bytes required.
# https://api.slack.com/methods/files.completeUploadExternal: `files` is a JSON array of {id, title}.
