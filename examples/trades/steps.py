"""Tag trades: block trades (notional >= 1M), odd lots (not a multiple of 100), venue default."""

import pyarrow as pa
import pyarrow.compute as pc


def tag(batch: pa.RecordBatch) -> pa.RecordBatch:
    notional = pc.multiply(pc.cast(batch.column("quantity"), pa.float64()), batch.column("price"))
    block = pc.greater_equal(notional, 1_000_000)
    odd_lot = pc.not_equal(
        pc.divide(batch.column("quantity"), 100).cast(pa.float64()),
        pc.divide(pc.cast(batch.column("quantity"), pa.float64()), 100),
    )
    tags = pc.binary_join_element_wise(pc.if_else(block, "block", ""), pc.if_else(odd_lot, "odd-lot", ""), ",")
    tags = pc.utf8_trim(tags, ",")
    venue = pc.fill_null(batch.column("venue"), "OTC")
    out = batch.set_column(batch.schema.get_field_index("venue"), "venue", venue)
    out = out.append_column("notional", pc.round(notional, 2))
    return out.append_column("tags", tags)
