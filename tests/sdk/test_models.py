"""`courtyard_sdk.db.model_base`: a plugin's rows dump the same JSON every time."""

from __future__ import annotations

from courtyard_sdk.db import model_base
from sqlmodel import Field, Session, create_engine, select

Model = model_base()


class Note(Model, table=True):
    __tablename__ = "test_models_note"

    id: int | None = Field(default=None, primary_key=True)
    text: str
    tag: str | None = None


def test_rows_dump_their_fields_in_declaration_order() -> None:
    engine = create_engine("sqlite://")
    Model.metadata.create_all(engine)
    with Session(engine) as session:
        made = Note(tag="home", text="buy milk")  # set in another order than declared
        session.add(made)
        session.commit()
        session.refresh(made)
        read = session.exec(select(Note)).one()

        for note in (made, read, Note(text="x")):
            assert list(note.model_dump()) == ["id", "text", "tag"]
        assert read.model_dump(exclude={"tag"}) == {"id": 1, "text": "buy milk"}
        assert read.model_dump(include={"tag"}) == {"tag": "home"}
